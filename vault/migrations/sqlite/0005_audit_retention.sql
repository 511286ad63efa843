-- Audit retention (PCI DSS 10.5.1: keep at least 12 months): the oldest events may be
-- deleted, and only those behind a checkpoint. A checkpoint is an ordinary chained event
-- (event_type 'audit.checkpoint') whose detail names the last event it covers
-- (covers_seq) and that event's hash; `audit verify` starts from it. Nothing newer than
-- the latest checkpoint's covered seq, and never a checkpoint itself or anything after
-- it, can be deleted; updates stay refused.
CREATE INDEX audit_events_type ON audit_events (event_type, seq);
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_prune_only_behind_checkpoint BEFORE DELETE ON audit_events
WHEN OLD.seq > COALESCE((
    SELECT MAX(MIN(CAST(json_extract(detail, '$.covers_seq') AS INTEGER), seq - 1))
    FROM audit_events WHERE event_type = 'audit.checkpoint'
), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only (only events behind a checkpoint may be pruned)');
END;
