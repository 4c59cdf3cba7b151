PRAGMA main.table_info("alembic_version")
-- ();

PRAGMA temp.table_info("alembic_version")
-- ();

PRAGMA main.table_info("alembic_version")
-- ();

PRAGMA temp.table_info("alembic_version")
-- ();

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
)
-- ();

CREATE TABLE couriers (
	courier_id VARCHAR(64) NOT NULL, 
	lat FLOAT NOT NULL, 
	lng FLOAT NOT NULL, 
	available BOOLEAN NOT NULL, 
	current_order_id VARCHAR(64), 
	assignment VARCHAR(16), 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (courier_id)
)
-- ();

CREATE INDEX ix_couriers_current_order_id ON couriers (current_order_id)
-- ();

CREATE TABLE locations (
	location_id VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	lat FLOAT NOT NULL, 
	lng FLOAT NOT NULL, 
	PRIMARY KEY (location_id)
)
-- ();

CREATE TABLE order_timeline (
	order_id VARCHAR(64) NOT NULL, 
	seq INTEGER NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (order_id, seq)
)
-- ();

CREATE TABLE orders (
	order_id VARCHAR(64) NOT NULL, 
	customer_id VARCHAR(128) NOT NULL, 
	idempotency_key VARCHAR(255) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	location_id VARCHAR(64) NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	failure_reason VARCHAR(32), 
	currency VARCHAR(3) NOT NULL, 
	total_cents INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	"view" JSON NOT NULL, 
	created_at VARCHAR(32) NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (order_id), 
	CONSTRAINT uq_orders_customer_key UNIQUE (customer_id, idempotency_key)
)
-- ();

CREATE INDEX ix_orders_created ON orders (created_at, order_id)
-- ();

CREATE INDEX ix_orders_customer_created ON orders (customer_id, created_at, order_id)
-- ();

CREATE INDEX ix_orders_status_created ON orders (status, created_at, order_id)
-- ();

CREATE TABLE payments (
	order_id VARCHAR(64) NOT NULL, 
	payment_id VARCHAR(64), 
	idempotency_key VARCHAR(255) NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	currency VARCHAR(3) NOT NULL, 
	amount_cents INTEGER NOT NULL, 
	authorized_cents INTEGER NOT NULL, 
	captured_cents INTEGER NOT NULL, 
	refunded_cents INTEGER NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (order_id)
)
-- ();

CREATE INDEX ix_payments_payment_id ON payments (payment_id)
-- ();

CREATE TABLE products (
	sku VARCHAR(64) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	price_cents INTEGER NOT NULL, 
	currency VARCHAR(3) NOT NULL, 
	hot BOOLEAN NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (sku)
)
-- ();

CREATE TABLE reservations (
	order_id VARCHAR(64) NOT NULL, 
	location_id VARCHAR(64) NOT NULL, 
	sku VARCHAR(64) NOT NULL, 
	quantity INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	created_at VARCHAR(32) NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (order_id, location_id, sku)
)
-- ();

CREATE INDEX ix_reservations_state ON reservations (state)
-- ();

CREATE TABLE stock (
	location_id VARCHAR(64) NOT NULL, 
	sku VARCHAR(64) NOT NULL, 
	available INTEGER NOT NULL, 
	reserved INTEGER NOT NULL, 
	sold INTEGER NOT NULL, 
	stocked INTEGER NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (location_id, sku), 
	CONSTRAINT ck_stock_available CHECK (available >= 0), 
	CONSTRAINT ck_stock_reserved CHECK (reserved >= 0), 
	CONSTRAINT ck_stock_sold CHECK (sold >= 0)
)
-- ();

INSERT INTO locations (location_id, name, lat, lng) VALUES (?, ?, ?, ?)
-- ('main', 'Main store', 31.2304, 121.4737);

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING version_num
-- ();

CREATE TABLE webhook_events (
	event_id VARCHAR(128) NOT NULL, 
	type VARCHAR(64) NOT NULL, 
	order_id VARCHAR(64) NOT NULL, 
	payment_id VARCHAR(64) NOT NULL, 
	amount_cents INTEGER NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	detail VARCHAR(200), 
	received_at VARCHAR(32) NOT NULL, 
	processed_at VARCHAR(32), 
	PRIMARY KEY (event_id)
)
-- ();

CREATE INDEX ix_webhook_events_order_id ON webhook_events (order_id)
-- ();

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'
-- ();

CREATE TABLE notifications (
	event_id VARCHAR(128) NOT NULL, 
	order_id VARCHAR(64) NOT NULL, 
	type VARCHAR(32) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_error VARCHAR(500), 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (event_id)
)
-- ();

CREATE INDEX ix_notifications_order_id ON notifications (order_id)
-- ();

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002'
-- ();

CREATE TABLE refunds (
	refund_id VARCHAR(64) NOT NULL, 
	order_id VARCHAR(64) NOT NULL, 
	idempotency_key VARCHAR(255) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	amount_cents INTEGER NOT NULL, 
	currency VARCHAR(3) NOT NULL, 
	reason VARCHAR(1000) NOT NULL, 
	restock JSON NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	failure_reason VARCHAR(200), 
	psp_refund_id VARCHAR(64), 
	created_at VARCHAR(32) NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (refund_id), 
	CONSTRAINT ck_refunds_amount CHECK (amount_cents > 0), 
	CONSTRAINT uq_refunds_order_key UNIQUE (order_id, idempotency_key)
)
-- ();

CREATE INDEX ix_refunds_order_created ON refunds (order_id, created_at)
-- ();

PRAGMA main.table_xinfo("payments")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('payments',);

PRAGMA main.foreign_key_list("payments")
-- ();

PRAGMA temp.foreign_key_list("payments")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('payments',);

PRAGMA main.index_list("payments")
-- ();

PRAGMA main.index_info("ix_payments_payment_id")
-- ();

PRAGMA main.index_list("payments")
-- ();

PRAGMA main.index_info("ix_payments_payment_id")
-- ();

PRAGMA main.index_info("sqlite_autoindex_payments_1")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('payments',);

CREATE TABLE _alembic_tmp_payments (
	order_id VARCHAR(64) NOT NULL, 
	payment_id VARCHAR(64), 
	idempotency_key VARCHAR(255) NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	currency VARCHAR(3) NOT NULL, 
	amount_cents INTEGER NOT NULL, 
	authorized_cents INTEGER NOT NULL, 
	captured_cents INTEGER NOT NULL, 
	refunded_cents INTEGER NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	refund_committed_cents INTEGER DEFAULT 0 NOT NULL, 
	PRIMARY KEY (order_id)
)
-- ();

INSERT INTO _alembic_tmp_payments (order_id, payment_id, idempotency_key, status, currency, amount_cents, authorized_cents, captured_cents, refunded_cents, updated_at) SELECT payments.order_id, payments.payment_id, payments.idempotency_key, payments.status, payments.currency, payments.amount_cents, payments.authorized_cents, payments.captured_cents, payments.refunded_cents, payments.updated_at 
FROM payments
-- ();

DROP TABLE payments
-- ();

ALTER TABLE _alembic_tmp_payments RENAME TO payments
-- ();

CREATE INDEX ix_payments_payment_id ON payments (payment_id)
-- ();

UPDATE payments SET refund_committed_cents = refunded_cents
-- ();

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003'
-- ();

ALTER TABLE orders ADD COLUMN checkout_input JSON
-- ();

CREATE TABLE reconciliations (
	subject_id VARCHAR(64) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	detail VARCHAR(500) NOT NULL, 
	at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (subject_id, action)
)
-- ();

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004'
-- ();

CREATE TABLE fencing_counters (
	name VARCHAR(64) NOT NULL, 
	value INTEGER NOT NULL, 
	PRIMARY KEY (name)
)
-- ();

CREATE TABLE zone_fences (
	zone VARCHAR(64) NOT NULL, 
	token INTEGER NOT NULL, 
	updated_at VARCHAR(32) NOT NULL, 
	PRIMARY KEY (zone)
)
-- ();

ALTER TABLE couriers ADD COLUMN fencing_token INTEGER
-- ();

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005'
-- ();

CREATE TABLE courier_tokens (
	token_hash VARCHAR(64) NOT NULL, 
	courier_id VARCHAR(64) NOT NULL, 
	created_at VARCHAR(32) NOT NULL, 
	revoked_at VARCHAR(32), 
	PRIMARY KEY (token_hash)
)
-- ();

CREATE INDEX ix_courier_tokens_courier_id ON courier_tokens (courier_id)
-- ();

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0006'
-- ();

CREATE TABLE order_events (
	id INTEGER NOT NULL, 
	event_id VARCHAR(100) NOT NULL, 
	order_id VARCHAR(64) NOT NULL, 
	seq INTEGER NOT NULL, 
	status VARCHAR(32) NOT NULL, 
	payload JSON NOT NULL, 
	created_at VARCHAR(32) NOT NULL, 
	published_at VARCHAR(32), 
	PRIMARY KEY (id), 
	UNIQUE (event_id)
)
-- ();

CREATE INDEX ix_order_events_unpublished ON order_events (id) WHERE published_at IS NULL
-- ();

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0007'
-- ();

UPDATE alembic_version SET version_num='0009' WHERE alembic_version.version_num = '0008'
-- ();
