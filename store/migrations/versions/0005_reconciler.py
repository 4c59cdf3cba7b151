"""reconciler: the order's checkout input, and the reconciler's record of what it did"""

import sqlalchemy as sa
from alembic import op

from store.migrations import columns as col

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # Nullable, no default: rows from before keep NULL (the reconciler fails those instead of
    # restarting them, and a retry with their key rebuilds the input as it always did).
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(col.json("checkout_input", nullable=True))
    op.create_table(
        "reconciliations",
        col.varchar("subject_id", 64),
        col.varchar("action", 32),
        col.varchar("detail", 500),
        col.timestamp("at"),
        sa.PrimaryKeyConstraint("subject_id", "action"),
    )


def downgrade() -> None:
    op.drop_table("reconciliations")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("checkout_input")
