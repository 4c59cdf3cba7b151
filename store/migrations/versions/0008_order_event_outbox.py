"""order event outbox: one row per status change, written with the read model, relayed to a broker"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "order_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        col.varchar("event_id", 100),
        col.varchar("order_id", 64),
        col.integer("seq"),
        col.varchar("status", 32),
        col.json("payload"),
        col.timestamp("created_at"),
        col.timestamp("published_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_order_events_unpublished",
            ["id"],
            unique=False,
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_order_events_unpublished",
            sqlite_where=sa.text("published_at IS NULL"),
            postgresql_where=sa.text("published_at IS NULL"),
        )

    op.drop_table("order_events")
