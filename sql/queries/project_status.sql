-- One row: a project's freshness. newest_event_at, the last nightly run and its outcome,
-- identity_as_of (end of the last successful run), pending_links and the events they touch.
-- $1: project id; $2: the key of its nightly advisory lock (NightlyJob.lockKey).
--
-- A run recorded as running whose lock no session holds ended without recording its end
-- (killed, or its connection lost): it is shown as failed, as the next run will record it.
with newest as (
    -- Exact, without reading every event once the derived tables exist (sql/150_report_tables.sql).
    select to_timestamp(idmerge.report_newest_ms($1) / 1000.0) as newest_event_at
),
last_run as (
    select started_at, finished_at,
           case
               when outcome = 'running' and not exists (
                   -- A bigint advisory key: its high 32 bits in classid, the low in objid.
                   select from pg_catalog.pg_locks as l
                   where l.locktype = 'advisory' and l.granted and l.objsubid = 1
                       and l.database = (select d.oid from pg_catalog.pg_database as d where d.datname = current_database())
                       and ((l.classid::bigint << 32) | l.objid::bigint) = $2::bigint)
                   then 'failed'
               else outcome
           end as outcome,
           links_applied, rows_rewritten
    from idmerge.job_runs
    where project_id = $1 and job = 'nightly'
    order by id desc
    limit 1
),
last_success as (
    select max(finished_at) as identity_as_of
    from idmerge.job_runs
    where project_id = $1 and job = 'nightly' and outcome = 'succeeded'
),
pending as (
    select count(*) as pending_links
    from idmerge.identity_map
    where project_id = $1 and not rewritten
),
pending_events as (
    select count(*) as pending_events
    from idmerge.identity_map as m
    inner join idmerge.events as e
        on e.project_id = m.project_id and e.ingested_distinct_id = m.id and e.resolved_seq < m.seq
    where m.project_id = $1 and not m.rewritten
),
final as (
    select
        newest.newest_event_at,
        last_run.started_at as last_run_started_at,
        last_run.finished_at as last_run_finished_at,
        last_run.outcome as last_run_outcome,
        last_run.links_applied as last_run_links_applied,
        last_run.rows_rewritten as last_run_rows_rewritten,
        last_success.identity_as_of,
        pending.pending_links,
        pending_events.pending_events
    from newest
    cross join last_success
    cross join pending
    cross join pending_events
    left join last_run on true
)
select * from final
