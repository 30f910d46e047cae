-- idmerge.activity: one person's events, newest first. Grain: one row per event.
--
-- p_id is any id of the person (a user id, `$device:D`, in original projects any member of
-- the cluster); it resolves live to the canonical id (identity map, no nightly lag, G2), and
-- the person's events are those idmerge.resolved_events gives that canonical distinct_id.
-- Only the ids that can resolve to it (itself, the ids mapped to it, legacy aliases of it)
-- are read, through the events' ingested-id index. Order: event time, newest first, then
-- ingest sequence, latest first. p_limit null: every event.

create or replace function idmerge.activity(p_project text, p_id text, p_limit integer default 100)
returns table (
    insert_id text, event text, "time" timestamptz, distinct_id text, ingested_distinct_id text,
    properties jsonb, ingest_seq bigint)
language sql stable as $$
    with project as (
        select p.id from idmerge.projects as p where p.name = p_project
    ),
    person as (
        select project.id as project_id, idmerge.resolve_identity(project.id, p_id) as canonical_id
        from project
    ),
    members as (
        select person.canonical_id as id
        from person
        union
        select m.id
        from idmerge.identity_map as m
        inner join person
            on m.project_id = person.project_id and m.canonical_id = person.canonical_id
        union
        select a.alias
        from idmerge.identity_aliases as a
        inner join person
            on a.project_id = person.project_id and a.target_id = person.canonical_id
    ),
    events as (
        -- Scalar subqueries, so the ids reach the index as one array (an init plan), not a join.
        select r.*
        from idmerge.resolved_events as r
        where r.project_id = (select person.project_id from person)
            and r.ingested_distinct_id = any ((select array_agg(members.id) from members)::text[])
            and r.distinct_id = (select person.canonical_id from person)
    ),
    final as (
        select
            events.insert_id, events.event, events.time, events.distinct_id, events.ingested_distinct_id,
            events.properties, events.ingest_seq
        from events
        order by events.time desc, events.ingest_seq desc
        limit p_limit
    )
    select * from final
$$;

comment on function idmerge.activity(text, text, integer) is
    'One person''s events, newest first (at most p_limit), found by any of their ids and resolved live.';
