"""courier tokens: per-courier API credentials, stored as SHA-256 hashes"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "courier_tokens",
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("courier_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
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
