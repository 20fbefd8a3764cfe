-- PostgreSQL's words for the sqlite-only block of ../0001_initial.sql: transitions are append-only.
CREATE FUNCTION transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transitions are append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER transitions_append_only_update BEFORE UPDATE ON transitions
FOR EACH ROW EXECUTE FUNCTION transitions_append_only();
CREATE TRIGGER transitions_append_only_delete BEFORE DELETE ON transitions
FOR EACH ROW EXECUTE FUNCTION transitions_append_only();
