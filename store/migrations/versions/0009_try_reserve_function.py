"""the inventory try as one PL/pgSQL function (PostgreSQL only): one autocommit round trip"""

from alembic import op

revision = "0009"
down_revision = "0008"

# store/inventory.py calls it and maps its answer; keep the two in step. Statements inside a
# function run in the caller's transaction (an autocommit call is one): the RAISE rolls the
# fence row back with it. Names resolve through the caller's search_path, as every other
# statement of the application does.
TRY_RESERVE = """
CREATE OR REPLACE FUNCTION tradeflow_try_reserve(
    p_order_id text, p_location_id text, p_sku text, p_quantity integer, p_now text
) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found_state text;
BEGIN
    INSERT INTO reservations (order_id, location_id, sku, quantity, state, created_at, updated_at)
    VALUES (p_order_id, p_location_id, p_sku, p_quantity, 'TRIED', p_now, p_now)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        -- The branch has a fence row already (a repeat, or a cancel that came first). A racing
        -- repeat waited on the unique index for the first call's commit and lands here too:
        -- it moves no stock.
        SELECT state INTO found_state FROM reservations
         WHERE order_id = p_order_id AND location_id = p_location_id AND sku = p_sku;
        RETURN coalesce(found_state, '');
    END IF;
    UPDATE stock
       SET available = available - p_quantity, reserved = reserved + p_quantity,
           updated_at = p_now
     WHERE location_id = p_location_id AND sku = p_sku AND available >= p_quantity;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% at %: fewer than % available', p_sku, p_location_id, p_quantity
            USING ERRCODE = 'TF001';
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(TRY_RESERVE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tradeflow_try_reserve(text, text, text, integer, text)")
