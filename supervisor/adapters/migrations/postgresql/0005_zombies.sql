-- PostgreSQL's words for the sqlite-only block of ../0005_zombies.sql: terminations are append-only.
CREATE FUNCTION terminations_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'terminations are append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER terminations_append_only_update BEFORE UPDATE ON terminations
FOR EACH ROW EXECUTE FUNCTION terminations_append_only();
CREATE TRIGGER terminations_append_only_delete BEFORE DELETE ON terminations
FOR EACH ROW EXECUTE FUNCTION terminations_append_only();
