"""refunds: the refunds table and the refund cap on payments"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "refunds",
        col.varchar("refund_id", 64),
        col.varchar("order_id", 64),
        col.varchar("idempotency_key", 255),
        col.varchar("request_hash", 64),
        col.integer("amount_cents"),
        col.varchar("currency", 3),
        col.varchar("reason", 1000),
        col.json("restock"),
        col.varchar("status", 16),
        col.varchar("failure_reason", 200, nullable=True),
        col.varchar("psp_refund_id", 64, nullable=True),
        col.timestamp("created_at"),
        col.timestamp("updated_at"),
        sa.CheckConstraint("amount_cents > 0", name="ck_refunds_amount"),
        sa.PrimaryKeyConstraint("refund_id"),
        sa.UniqueConstraint("order_id", "idempotency_key", name="uq_refunds_order_key"),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index("ix_refunds_order_created", ["order_id", "created_at"], unique=False)

    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "refund_committed_cents", sa.Integer(), nullable=False, server_default=sa.text("0")
            )
        )
    # Whatever was refunded before the cap existed counts against it.
    op.execute("UPDATE payments SET refund_committed_cents = refunded_cents")


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("refund_committed_cents")
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_order_created")
    op.drop_table("refunds")
