"""dispatch fencing: lease token counters, the highest token per zone, the token on offers"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "fencing_counters",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "zone_fences",
        sa.Column("zone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.PrimaryKeyConstraint("zone"),
    )
    with op.batch_alter_table("couriers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fencing_token", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("couriers", schema=None) as batch_op:
        batch_op.drop_column("fencing_token")
    op.drop_table("zone_fences")
    op.drop_table("fencing_counters")
