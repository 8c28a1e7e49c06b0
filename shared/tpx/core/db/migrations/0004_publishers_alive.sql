-- How many of the given publishers exist right now.
-- PL/pgSQL and VOLATILE on purpose: each call runs its query with a fresh snapshot, so the
-- one-statement mint sees a deletion that committed while it waited for the mint gate, without
-- locking the publisher rows (FOR KEY SHARE from many concurrent mints of one publisher creates a
-- multixact per lock, which cost more than the rest of the statement).
CREATE FUNCTION tpx_publishers_alive(ids uuid[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (SELECT count(*) FROM publishers WHERE id = ANY (ids));
END $$;
