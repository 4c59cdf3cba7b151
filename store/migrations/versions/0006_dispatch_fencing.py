"""dispatch fencing: lease token counters, the highest token per zone, the token on offers"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "fencing_counters",
        col.varchar("name", 64),
        col.integer("value"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "zone_fences",
        col.varchar("zone", 64),
        col.integer("token"),
        col.timestamp("updated_at"),
        sa.PrimaryKeyConstraint("zone"),
    )
    with op.batch_alter_table("couriers", schema=None) as batch_op:
        batch_op.add_column(col.integer("fencing_token", nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("couriers", schema=None) as batch_op:
        batch_op.drop_column("fencing_token")
    op.drop_table("zone_fences")
    op.drop_table("fencing_counters")
