-- Tell every exchange replica that publishers changed, so their candidate caches drop what they hold.
-- Publishers change rarely (admin calls, and the one-time binding of ids), so the commit-time cost
-- of NOTIFY stays off the exchange's hot path.
CREATE FUNCTION tpx_publishers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tpx_publishers', '');
    RETURN NULL;
END $$;
CREATE TRIGGER publishers_notify AFTER INSERT OR UPDATE OR DELETE ON publishers
    FOR EACH STATEMENT EXECUTE FUNCTION tpx_publishers_notify();
