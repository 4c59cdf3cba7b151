PRAGMA main.table_info("alembic_version")
-- ();

SELECT alembic_version.version_num 
FROM alembic_version
-- ();

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0009'
-- ();

DROP INDEX ix_order_events_unpublished
-- ();

DROP TABLE order_events
-- ();

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0008'
-- ();

DROP INDEX ix_courier_tokens_courier_id
-- ();

DROP TABLE courier_tokens
-- ();

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0007'
-- ();

PRAGMA main.table_xinfo("couriers")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('couriers',);

PRAGMA main.foreign_key_list("couriers")
-- ();

PRAGMA temp.foreign_key_list("couriers")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('couriers',);

PRAGMA main.index_list("couriers")
-- ();

PRAGMA main.index_info("ix_couriers_current_order_id")
-- ();

PRAGMA main.index_list("couriers")
-- ();

PRAGMA main.index_info("ix_couriers_current_order_id")
-- ();

PRAGMA main.index_info("sqlite_autoindex_couriers_1")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('couriers',);

CREATE TABLE _alembic_tmp_couriers (
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

INSERT INTO _alembic_tmp_couriers (courier_id, lat, lng, available, current_order_id, assignment, updated_at) SELECT couriers.courier_id, couriers.lat, couriers.lng, couriers.available, couriers.current_order_id, couriers.assignment, couriers.updated_at 
FROM couriers
-- ();

DROP TABLE couriers
-- ();

ALTER TABLE _alembic_tmp_couriers RENAME TO couriers
-- ();

CREATE INDEX ix_couriers_current_order_id ON couriers (current_order_id)
-- ();

DROP TABLE zone_fences
-- ();

DROP TABLE fencing_counters
-- ();

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0006'
-- ();

DROP TABLE reconciliations
-- ();

PRAGMA main.table_xinfo("orders")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('orders',);

PRAGMA main.foreign_key_list("orders")
-- ();

PRAGMA temp.foreign_key_list("orders")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('orders',);

PRAGMA main.index_list("orders")
-- ();

PRAGMA main.index_info("ix_orders_status_created")
-- ();

PRAGMA main.index_info("ix_orders_customer_created")
-- ();

PRAGMA main.index_info("ix_orders_created")
-- ();

PRAGMA main.index_list("orders")
-- ();

PRAGMA main.index_info("ix_orders_status_created")
-- ();

PRAGMA main.index_info("ix_orders_customer_created")
-- ();

PRAGMA main.index_info("ix_orders_created")
-- ();

PRAGMA main.index_info("sqlite_autoindex_orders_2")
-- ();

PRAGMA main.index_info("sqlite_autoindex_orders_1")
-- ();

SELECT sql FROM  (SELECT * FROM sqlite_master UNION ALL   SELECT * FROM sqlite_temp_master) WHERE name = ? AND type in ('table', 'view')
-- ('orders',);

CREATE TABLE _alembic_tmp_orders (
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

INSERT INTO _alembic_tmp_orders (order_id, customer_id, idempotency_key, request_hash, location_id, status, failure_reason, currency, total_cents, seq, "view", created_at, updated_at) SELECT orders.order_id, orders.customer_id, orders.idempotency_key, orders.request_hash, orders.location_id, orders.status, orders.failure_reason, orders.currency, orders.total_cents, orders.seq, orders."view", orders.created_at, orders.updated_at 
FROM orders
-- ();

DROP TABLE orders
-- ();

ALTER TABLE _alembic_tmp_orders RENAME TO orders
-- ();

CREATE INDEX ix_orders_created ON orders (created_at, order_id)
-- ();

CREATE INDEX ix_orders_customer_created ON orders (customer_id, created_at, order_id)
-- ();

CREATE INDEX ix_orders_status_created ON orders (status, created_at, order_id)
-- ();

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0005'
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

DROP INDEX ix_refunds_order_created
-- ();

DROP TABLE refunds
-- ();

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0004'
-- ();

DROP INDEX ix_notifications_order_id
-- ();

DROP TABLE notifications
-- ();

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0003'
-- ();

DROP INDEX ix_webhook_events_order_id
-- ();

DROP TABLE webhook_events
-- ();

UPDATE alembic_version SET version_num='0001' WHERE alembic_version.version_num = '0002'
-- ();

DROP TABLE stock
-- ();

DROP INDEX ix_reservations_state
-- ();

DROP TABLE reservations
-- ();

DROP TABLE products
-- ();

DROP INDEX ix_payments_payment_id
-- ();

DROP TABLE payments
-- ();

DROP INDEX ix_orders_status_created
-- ();

DROP INDEX ix_orders_customer_created
-- ();

DROP INDEX ix_orders_created
-- ();

DROP TABLE orders
-- ();

DROP TABLE order_timeline
-- ();

DROP TABLE locations
-- ();

DROP INDEX ix_couriers_current_order_id
-- ();

DROP TABLE couriers
-- ();

DELETE FROM alembic_version WHERE alembic_version.version_num = '0001'
-- ();
