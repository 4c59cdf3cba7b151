"""initial schema"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "couriers",
        col.varchar("courier_id", 64),
        col.real("lat"),
        col.real("lng"),
        col.boolean("available"),
        col.varchar("current_order_id", 64, nullable=True),
        col.varchar("assignment", 16, nullable=True),
        col.timestamp("updated_at"),
        sa.PrimaryKeyConstraint("courier_id"),
    )
    with op.batch_alter_table("couriers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_couriers_current_order_id"), ["current_order_id"], unique=False
        )

    op.create_table(
        "locations",
        col.varchar("location_id", 64),
        col.varchar("name", 200),
        col.real("lat"),
        col.real("lng"),
        sa.PrimaryKeyConstraint("location_id"),
    )
    op.create_table(
        "order_timeline",
        col.varchar("order_id", 64),
        col.integer("seq"),
        col.varchar("status", 32),
        col.timestamp("at"),
        sa.PrimaryKeyConstraint("order_id", "seq"),
    )
    op.create_table(
        "orders",
        col.varchar("order_id", 64),
        col.varchar("customer_id", 128),
        col.varchar("idempotency_key", 255),
        col.varchar("request_hash", 64),
        col.varchar("location_id", 64),
        col.varchar("status", 32),
        col.varchar("failure_reason", 32, nullable=True),
        col.varchar("currency", 3),
        col.integer("total_cents"),
        col.integer("seq"),
        col.json("view"),
        col.timestamp("created_at"),
        col.timestamp("updated_at"),
        sa.PrimaryKeyConstraint("order_id"),
        sa.UniqueConstraint("customer_id", "idempotency_key", name="uq_orders_customer_key"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_created", ["created_at", "order_id"], unique=False)
        batch_op.create_index(
            "ix_orders_customer_created", ["customer_id", "created_at", "order_id"], unique=False
        )
        batch_op.create_index(
            "ix_orders_status_created", ["status", "created_at", "order_id"], unique=False
        )

    op.create_table(
        "payments",
        col.varchar("order_id", 64),
        col.varchar("payment_id", 64, nullable=True),
        col.varchar("idempotency_key", 255),
        col.varchar("status", 32),
        col.varchar("currency", 3),
        col.integer("amount_cents"),
        col.integer("authorized_cents"),
        col.integer("captured_cents"),
        col.integer("refunded_cents"),
        col.timestamp("updated_at"),
        sa.PrimaryKeyConstraint("order_id"),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payments_payment_id"), ["payment_id"], unique=False)

    op.create_table(
        "products",
        col.varchar("sku", 64),
        col.varchar("name", 200),
        col.integer("price_cents"),
        col.varchar("currency", 3),
        col.boolean("hot"),
        col.timestamp("updated_at"),
        sa.PrimaryKeyConstraint("sku"),
    )
    op.create_table(
        "reservations",
        col.varchar("order_id", 64),
        col.varchar("location_id", 64),
        col.varchar("sku", 64),
        col.integer("quantity"),
        col.varchar("state", 16),
        col.timestamp("created_at"),
        col.timestamp("updated_at"),
        sa.PrimaryKeyConstraint("order_id", "location_id", "sku"),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reservations_state"), ["state"], unique=False)

    op.create_table(
        "stock",
        col.varchar("location_id", 64),
        col.varchar("sku", 64),
        col.integer("available"),
        col.integer("reserved"),
        col.integer("sold"),
        col.integer("stocked"),
        col.timestamp("updated_at"),
        sa.CheckConstraint("available >= 0", name="ck_stock_available"),
        sa.CheckConstraint("reserved >= 0", name="ck_stock_reserved"),
        sa.CheckConstraint("sold >= 0", name="ck_stock_sold"),
        sa.PrimaryKeyConstraint("location_id", "sku"),
    )
    # The contract says location `main` exists from the start.
    op.bulk_insert(
        sa.table(
            "locations",
            sa.column("location_id", sa.String),
            sa.column("name", sa.String),
            sa.column("lat", sa.Float),
            sa.column("lng", sa.Float),
        ),
        [{"location_id": "main", "name": "Main store", "lat": 31.2304, "lng": 121.4737}],
    )


def downgrade() -> None:
    op.drop_table("stock")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reservations_state"))

    op.drop_table("reservations")
    op.drop_table("products")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_payment_id"))

    op.drop_table("payments")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_status_created")
        batch_op.drop_index("ix_orders_customer_created")
        batch_op.drop_index("ix_orders_created")

    op.drop_table("orders")
    op.drop_table("order_timeline")
    op.drop_table("locations")
    with op.batch_alter_table("couriers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_couriers_current_order_id"))

    op.drop_table("couriers")
