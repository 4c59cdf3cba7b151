BEGIN;

-- Running downgrade 0009 -> 0008

DROP FUNCTION IF EXISTS tradeflow_try_reserve(text, text, text, integer, text);

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0009';

-- Running downgrade 0008 -> 0007

DROP INDEX ix_order_events_unpublished;

DROP TABLE order_events;

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0008';

-- Running downgrade 0007 -> 0006

DROP INDEX ix_courier_tokens_courier_id;

DROP TABLE courier_tokens;

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0007';

-- Running downgrade 0006 -> 0005

ALTER TABLE couriers DROP COLUMN fencing_token;

DROP TABLE zone_fences;

DROP TABLE fencing_counters;

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0006';

-- Running downgrade 0005 -> 0004

DROP TABLE reconciliations;

ALTER TABLE orders DROP COLUMN checkout_input;

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0005';

-- Running downgrade 0004 -> 0003

ALTER TABLE payments DROP COLUMN refund_committed_cents;

DROP INDEX ix_refunds_order_created;

DROP TABLE refunds;

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0004';

-- Running downgrade 0003 -> 0002

DROP INDEX ix_notifications_order_id;

DROP TABLE notifications;

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0003';

-- Running downgrade 0002 -> 0001

DROP INDEX ix_webhook_events_order_id;

DROP TABLE webhook_events;

UPDATE alembic_version SET version_num='0001' WHERE alembic_version.version_num = '0002';

-- Running downgrade 0001 -> 

DROP TABLE stock;

DROP INDEX ix_reservations_state;

DROP TABLE reservations;

DROP TABLE products;

DROP INDEX ix_payments_payment_id;

DROP TABLE payments;

DROP INDEX ix_orders_status_created;

DROP INDEX ix_orders_customer_created;

DROP INDEX ix_orders_created;

DROP TABLE orders;

DROP TABLE order_timeline;

DROP TABLE locations;

DROP INDEX ix_couriers_current_order_id;

DROP TABLE couriers;

DELETE FROM alembic_version WHERE alembic_version.version_num = '0001';

COMMIT;

