"""courier tokens: per-courier API credentials, stored as SHA-256 hashes"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "courier_tokens",
        col.varchar("token_hash", 64),
        col.varchar("courier_id", 64),
        col.timestamp("created_at"),
        col.timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("courier_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_courier_tokens_courier_id"), ["courier_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("courier_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_courier_tokens_courier_id"))
    op.drop_table("courier_tokens")
