-- Mirrors sqlite/0005_audit_retention.sql. Audit retention (PCI DSS 10.5.1: keep at
-- least 12 months): only events behind the latest checkpoint may be deleted; a
-- checkpoint never covers itself or anything after it. Updates and TRUNCATE stay refused.
CREATE INDEX audit_events_type ON audit_events (event_type, seq);
DROP TRIGGER audit_events_no_update_or_delete ON audit_events;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE FUNCTION audit_events_prune_only_behind_checkpoint() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq > COALESCE((
        SELECT MAX(LEAST((detail::jsonb ->> 'covers_seq')::bigint, seq - 1))
        FROM audit_events WHERE event_type = 'audit.checkpoint'
    ), 0) THEN
        RAISE EXCEPTION 'audit events are append-only (only events behind a checkpoint may be pruned)';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER audit_events_prune_only_behind_checkpoint BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_prune_only_behind_checkpoint();
