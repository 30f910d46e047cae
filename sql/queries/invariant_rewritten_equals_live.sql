-- Invariant: after a nightly run, the rewritten column equals the live resolution for every
-- event. Grain: one row per violating event; zero rows means the invariant holds.
-- $1: project id.
with live as (
    select project_id, ingest_seq, insert_id, distinct_id
    from idmerge.resolved_events
    where project_id = $1
),
rewritten as (
    select project_id, seq, distinct_id
    from idmerge.events
    where project_id = $1
),
final as (
    select live.insert_id, live.distinct_id as live_distinct_id, rewritten.distinct_id as rewritten_distinct_id
    from live
    inner join rewritten
        on rewritten.project_id = live.project_id and rewritten.seq = live.ingest_seq
    where live.distinct_id is distinct from rewritten.distinct_id
)
select * from final
