-- The derived report tables (migrations/0005_report_tables.sql): which people they hold
-- stale, and their refresh by the nightly job.
--
-- Exactness (decisions.md, Funnels: "whatever the live view corrects, they correct too").
-- The tables are the live view as of as_of_seq. Since then an event's live distinct_id can
-- change only through an identity mapping written later (identity_map.seq > as_of_seq: a new
-- link, or an original-API merge), and the events themselves change only by new rows or
-- replaced duplicates (both get a new seq > as_of_seq). The ids those touch are "changed";
-- the people they belonged to then (report_person_ids) and belong to now (the live view) are
-- "stale". Every other person's events, identities and properties are exactly those the
-- tables hold, so a report reads them from the tables and the stale people from the live
-- view, and adds the two. This holds whatever the interleaving of imports and nightly runs:
-- it depends on neither identity_map.rewritten nor events.distinct_id.

-- Epoch milliseconds of an event time (times are stored to the millisecond). The body is
-- immutable as the function is declared (extract(epoch from timestamptz) is only stable; from
-- the interval since the epoch, immutable), so PostgreSQL inlines it instead of calling a SQL
-- function for every row: about 6 microseconds a row, a tenth of a nightly refresh.
create or replace function idmerge.report_ms(t timestamptz)
returns bigint
language sql immutable parallel safe as $$
    select (extract(epoch from (t - timestamptz '1970-01-01 00:00:00+00')) * 1000)::bigint
$$;

-- Property keys report_person_props leaves out (identity fields, never a touchpoint or a
-- value); a report on one of them reads the live view.
create or replace function idmerge.report_excluded_keys()
returns text[]
language sql immutable parallel safe as $$
    select array['time', '$insert_id', 'distinct_id', '$device_id', '$user_id', 'token']
$$;

-- A timeline key (report_person_events.person_keys): the event name's number
-- (report_event_names.id, below 2^21) times 2^42, plus the epoch milliseconds (below 2^42
-- until the year 2109; imports refuse times more than an hour ahead).
drop function if exists idmerge.report_timeline_key(text[], text, bigint);

create or replace function idmerge.report_timeline_key(p_name_id integer, p_ms bigint)
returns bigint
language sql immutable parallel safe as $$
    select p_name_id::bigint * 4398046511104 + p_ms
$$;

-- The ingested distinct_ids whose events may resolve, or be, otherwise than at as_of_seq:
-- mapped since, stored since, or replaced since (migrations/0009_report_replaced_ids.sql).
create or replace function idmerge.report_changed_ids(p_project_id integer, p_as_of_seq bigint)
returns table (id text)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_seqscan = off
set max_parallel_workers_per_gather = 0
as $$
begin
    return query
    select m.id
    from idmerge.identity_map as m
    where m.project_id = p_project_id and m.seq > p_as_of_seq
    union
    select e.ingested_distinct_id
    from idmerge.events as e
    where e.project_id = p_project_id and e.seq > p_as_of_seq
    union
    -- Copies that replaced stored events in place, keeping their seq (original, legacy).
    select r.ingested_distinct_id
    from idmerge.report_replaced_ids as r
    where r.project_id = p_project_id and r.seq > p_as_of_seq;
end
$$;

-- The newest stored event time of a project, in epoch milliseconds (null: no events). With
-- derived tables, the newest up to as_of_seq and the newest of the few events after it
-- (events are never deleted, and a replaced duplicate keeps its time); else a scan.
create or replace function idmerge.report_newest_ms(p_project_id integer)
returns bigint
language plpgsql stable
set plan_cache_mode = force_custom_plan
as $$
declare
    as_of bigint;
    newest bigint;
    since bigint;
begin
    -- A standby cannot read the (unlogged) derived tables: scan there.
    if not pg_is_in_recovery() then
        select s.as_of_seq, s.newest_ms into as_of, newest from idmerge.report_state as s where s.project_id = p_project_id;
    end if;
    if as_of is null then
        return (select idmerge.report_ms(max(e.time)) from idmerge.events as e where e.project_id = p_project_id);
    end if;
    select idmerge.report_ms(max(e.time)) into since
    from idmerge.events as e
    where e.project_id = p_project_id and e.seq > as_of;
    return greatest(newest, since);
end
$$;

-- The people the derived tables hold stale, or null when the project has no derived tables
-- (then every person is read from the live view), as after a crash, which empties them, and
-- on a standby, which cannot read them (both: migrations/0008). Sorted, without duplicates.
--
-- Its cost follows the changed ids, not the tables: the events newer than as_of_seq are
-- found on the BRIN index on seq, and the changed ids' rows by index (`= any(changed)`
-- probes the events' and report_person_ids' indexes once per id). Sequential scans are off
-- for this function because, for a few thousand ids, the planner prices those probes above
-- a scan of every event (it took 0.6 s instead of 0.07 s at 1M events for 2,700 ids), and
-- parallel workers are too: they take longer to start than such reads take. Nested loops are
-- off as well: the live view joins the events to the links not yet rewritten, and with
-- statistics taken when no link was pending (right after a nightly run) the planner expects
-- one such link and rescans them all for every event (1.0 s instead of 0.11 s for 1,348 new links at
-- 1M events); hashing them costs one pass.
create or replace function idmerge.report_stale_people(p_project_id integer)
returns text[]
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_seqscan = off
set enable_nestloop = off
set max_parallel_workers_per_gather = 0
as $$
declare
    as_of bigint;
    changed text[];
    people text[];
begin
    -- A standby cannot read the derived tables (unlogged, migrations/0008): none, there.
    if pg_is_in_recovery() then
        return null;
    end if;
    select s.as_of_seq into as_of from idmerge.report_state as s where s.project_id = p_project_id;
    if as_of is null then
        return null;
    end if;
    -- Nothing stored since as_of_seq: every event, identity mapping and replaced copy takes its
    -- seq from projects.last_seq in the transaction that stores it, so none is newer, and no
    -- one is stale (without reading the events and mappings newer than as_of_seq).
    if (select p.last_seq from idmerge.projects as p where p.id = p_project_id) <= as_of then
        return '{}';
    end if;
    select coalesce(array_agg(c.id), '{}') into changed from idmerge.report_changed_ids(p_project_id, as_of) as c;
    if cardinality(changed) = 0 then
        return '{}';
    end if;
    -- The live events of the changed ids: those stored since as_of_seq (all of changed ids)
    -- by the BRIN on seq, and the older ones of the ids the derived tables hold (only those
    -- had events then), as refresh_report_tables reads them.
    select coalesce(array_agg(p.distinct_id order by p.distinct_id), '{}') into people
    from (
        select i.distinct_id
        from idmerge.report_person_ids as i
        where i.project_id = p_project_id and i.ingested_distinct_id = any(changed)
        union
        select r.distinct_id
        from idmerge.resolved_events as r
        where r.project_id = p_project_id and r.ingest_seq > as_of
        union
        select r.distinct_id
        from idmerge.resolved_events as r
        where r.project_id = p_project_id and r.ingest_seq <= as_of
            and r.ingested_distinct_id = any(array(
                select i.ingested_distinct_id
                from idmerge.report_person_ids as i
                where i.project_id = p_project_id and i.ingested_distinct_id = any(changed)))
    ) as p;
    return people;
end
$$;

-- The ingested distinct_ids whose events can belong (live) to any of p_people: the ids
-- those people had in the derived tables, and every changed id (read by index).
create or replace function idmerge.report_people_ids(p_project_id integer, p_people text[])
returns text[]
language sql stable
set enable_seqscan = off
set max_parallel_workers_per_gather = 0
as $$
    with state as (
        select as_of_seq from idmerge.report_state where project_id = p_project_id
    ),
    ids as (
        select i.ingested_distinct_id as id
        from idmerge.report_person_ids as i
        where i.project_id = p_project_id and i.distinct_id = any(p_people)
        union
        select c.id from state cross join lateral idmerge.report_changed_ids(p_project_id, state.as_of_seq) as c
        union
        select unnest(p_people)
    )
    select coalesce(array_agg(id order by id), '{}') from ids
$$;

-- The live events of p_people (all people when p_people is null), with the live view's
-- columns that reports read. For a list of people, their ids' events are read by index and
-- serially, nested loops off (as in report_stale_people); for all people, by a (serial)
-- scan: reports that read everyone scan the live view themselves.
drop function if exists idmerge.report_people_events(integer, text[]);

create or replace function idmerge.report_people_events(p_project_id integer, p_people text[])
returns table (
    distinct_id text,
    ingested_distinct_id text,
    event text,
    "time" timestamptz,
    ingest_seq bigint,
    properties jsonb
)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set enable_seqscan = off
set enable_nestloop = off
set max_parallel_workers_per_gather = 0
as $$
#variable_conflict use_column
declare
    ids text[];
begin
    if p_people is null then
        -- Restored at exit by the function's own SET clause.
        perform set_config('enable_seqscan', 'on', true);
        return query
        select r.distinct_id, r.ingested_distinct_id, r.event, r.time, r.ingest_seq, r.properties
        from idmerge.resolved_events as r
        where r.project_id = p_project_id;
        return;
    end if;
    if cardinality(p_people) = 0 then
        return;
    end if;
    ids := idmerge.report_people_ids(p_project_id, p_people);
    return query
    select r.distinct_id, r.ingested_distinct_id, r.event, r.time, r.ingest_seq, r.properties
    from idmerge.resolved_events as r
    where r.project_id = p_project_id
        and r.ingested_distinct_id = any(ids)
        and r.distinct_id = any(p_people);
end
$$;

-- Refreshing a project's derived tables from the live view: only the stale people, or all of
-- them when p_full, when the tables do not exist yet, or when most people are stale. In one
-- REPEATABLE READ transaction (one snapshot: as_of_seq must match the events read), in two
-- steps, so that the nightly job can hand the props to another connection between them:
--
--   refresh_report_tables_begin  finds the stale people and reads their live events into
--                                pg_temp.idmerge_report_events; moves the mark when no one is
--                                stale (then nothing more is needed); returns the stale people
--                                (null: everyone), what the second step needs, and where
--                                those events are stored (partition and ctid, for the props
--                                part, which reads them again by ctid in the same snapshot);
--   refresh_report_tables_finish writes the tables from those events: p_tables 'all', or
--                                'rest' (every table but report_person_props, whose rows
--                                report_write_props writes, then, on another connection).
--
-- refresh_report_tables does both, 'all'. The split (NightlyJob.refreshReportTables): the
-- props transaction must commit first, and the other only after it has (else it rolls back).
-- Reports stay exact whichever of the two commits. report_state.as_of_seq and
-- report_person_ids move with the second, so until it commits every person whose props the
-- first rewrote is stale (stale since the old as_of_seq, hence read from the live view); and
-- the props rows it may leave of people gone by then are read by no report (props are read
-- only for the people of report_person_events rows). It records whom it rewrote
-- (report_props_written), and the next refresh counts them stale if the other part never
-- committed, so no such row outlives it. report_person_events could not go first: a person
-- gone by then would keep rows that reports read.
--
-- One temp table only: creating one with a jsonb column (and so a TOAST table) took about
-- 5 ms here, in the file system; the single function created six on every run.
drop function if exists idmerge.refresh_report_tables_begin(integer, boolean);

create or replace function idmerge.refresh_report_tables_begin(p_project_id integer, p_full boolean default false)
returns table (
    stale text[], full_rebuild boolean, state jsonb, props_partitions oid[], props_ctids tid[], props_people text[])
language plpgsql
set plan_cache_mode = force_custom_plan
-- Its "drop table if exists pg_temp..." would otherwise print notices to a psql user.
set client_min_messages = warning
set enable_seqscan = on
set enable_mergejoin = on
set enable_nestloop = on
set jit = off
as $$
#variable_conflict use_column
declare
    changed text[];
    -- The changed ids that had events at as_of_seq (a report_person_ids row), and whose.
    old_ids text[];
    old_people text[];
    -- The stale people's ids that leave report_person_ids, and how many people they were.
    gone_ids text[];
    gone_people bigint := 0;
    -- People whose props a refresh's props part rewrote, and whose other part never committed
    -- (migrations/0017_report_props_written.sql): stale too.
    props_ahead text[] := '{}';
    as_of bigint;
    total bigint;
    -- The caller's setting: the few-people reads below run serially (parallel workers take
    -- longer to start than those index reads take); restored after them.
    parallel_workers constant text := current_setting('max_parallel_workers_per_gather');
    snapshot_seq bigint;
    excluded_keys constant text[] := idmerge.report_excluded_keys();
    -- The keys whose amounts report_person_events.amounts holds (migration 0016): kept by an
    -- incremental refresh, chosen anew by a full one.
    value_keys text[] := '{}';
begin
    if current_setting('transaction_isolation') not in ('repeatable read', 'serializable') then
        raise exception 'refresh_report_tables must run in a REPEATABLE READ transaction'
            using errcode = 'invalid_transaction_state';
    end if;
    select last_seq into snapshot_seq from idmerge.projects where id = p_project_id;
    if snapshot_seq is null then
        raise exception 'no project with id %', p_project_id using errcode = 'invalid_parameter_value';
    end if;
    select s.people, s.as_of_seq, s.value_keys into total, as_of, value_keys
    from idmerge.report_state as s where s.project_id = p_project_id;
    value_keys := coalesce(value_keys, '{}');
    -- A second begin in one transaction would find the stale people's report_person_ids rows
    -- gone already, and miss their older events.
    if to_regclass('pg_temp.idmerge_report_events') is not null then
        raise exception 'refresh_report_tables_begin was already called in this transaction'
            using errcode = 'invalid_transaction_state';
    end if;
    -- The props parts since the last refresh that committed whole: those of the same as_of_seq
    -- ran ahead of a second part that never committed; the older ones were followed by theirs.
    select coalesce(array_agg(distinct p.id), '{}') into props_ahead
    from idmerge.report_props_written as w
    cross join lateral unnest(w.people) as p (id)
    where w.project_id = p_project_id and w.as_of_seq = as_of;
    delete from idmerge.report_props_written as w where w.project_id = p_project_id;

    -- The stale people, as report_stale_people finds them (the same rule), but keeping the
    -- changed ids' live events, which the refresh reads anyway: the changed ids are found
    -- once and their events read once. By index (sequential scans off; restored below, and
    -- at exit by the SET clause above): a few thousand ids, which the planner would price
    -- above a scan of every event.
    if as_of is not null and not p_full then
        changed := array(select c.id from idmerge.report_changed_ids(p_project_id, as_of) as c);
        if cardinality(changed) = 0 and cardinality(props_ahead) = 0 then
            stale := '{}';
        end if;
    end if;
    -- So many changed ids that most people are likely stale: rebuild everything, without
    -- reading their events by index first.
    if cardinality(changed) + cardinality(props_ahead) > 0
            and cardinality(changed) + cardinality(props_ahead) <= greatest(total / 4, 10000) then
        perform set_config('enable_seqscan', 'off', true);
        perform set_config('max_parallel_workers_per_gather', '0', true);
        -- Generic plans for the reads by a list of ids: a custom plan estimates the selectivity
        -- of each of the thousands of ids against every partition's statistics; with
        -- sequential scans off the plans are the same index reads.
        perform set_config('plan_cache_mode', 'force_generic_plan', true);
        -- Whom the changed ids' events belonged to at as_of_seq. Only the ids found here had
        -- events then (the tables hold every event up to as_of_seq, and report_person_ids a
        -- row for each of their ids), so only these are looked up among the older events.
        select coalesce(array_agg(distinct i.ingested_distinct_id), '{}'),
               coalesce(array_agg(distinct i.distinct_id), '{}')
        into old_ids, old_people
        from idmerge.report_person_ids as i
        where i.project_id = p_project_id and i.ingested_distinct_id = any(changed);
        -- Their live events: those stored (or replaced, with a new seq) since as_of_seq, all of
        -- changed ids, by the BRIN on seq; and the older events of the ids found above. The
        -- live view's join to the links not yet rewritten hashes them, here and below, as in
        -- report_stale_people (nested loops are off for the incremental refresh; restored at
        -- exit): with statistics on identity_map the planner probes its primary key once per
        -- event instead (74 M instructions more for 4,769 events of 1,348 links at 1M events),
        -- or, with statistics taken when no link was pending, rescans them all per event.
        perform set_config('enable_nestloop', 'off', true);
        create temp table idmerge_report_events on commit drop as
        select r.distinct_id, r.ingested_distinct_id, r.event, idmerge.report_ms(r.time) as ms, r.ingest_seq as seq,
               r.properties, r.event_partition, r.event_ctid
        from idmerge.resolved_events_located as r
        where r.project_id = p_project_id and r.ingest_seq > as_of
        union all
        select r.distinct_id, r.ingested_distinct_id, r.event, idmerge.report_ms(r.time) as ms, r.ingest_seq as seq,
               r.properties, r.event_partition, r.event_ctid
        from idmerge.resolved_events_located as r
        where r.project_id = p_project_id and r.ingest_seq <= as_of
            -- The array through a subquery: planned without its values (a CREATE TABLE AS is
            -- planned with them, which the generic plans above avoid: the planner estimated
            -- each of 1,348 ids against every partition's statistics, 5 ms of planning).
            and r.ingested_distinct_id = any((select old_ids)::text[]);
        -- The people ahead in props are stale like the others: their events are among those
        -- read here, or among those of their ids in report_person_ids (below), or they have
        -- none (gone into another person), and then their props rows only leave.
        stale := array(
            select p.id collate "C" from unnest(old_people) as p (id)
            union
            select e.distinct_id collate "C" from pg_temp.idmerge_report_events as e
            union
            select p.id collate "C" from unnest(props_ahead) as p (id)
            order by 1);
        perform set_config('enable_seqscan', 'on', true);
        perform set_config('max_parallel_workers_per_gather', parallel_workers, true);
        perform set_config('plan_cache_mode', 'force_custom_plan', true);
    end if;
    full_rebuild := p_full or stale is null or cardinality(stale) > greatest(total / 4, 10000);
    if full_rebuild then
        stale := null;
    end if;

    -- Nothing changed since as_of_seq (in this snapshot): the tables already are the live
    -- view as of snapshot_seq, so only the mark moves (a run with nothing to do stays cheap).
    if not full_rebuild and cardinality(stale) = 0 then
        update idmerge.report_state as s set as_of_seq = snapshot_seq, built_at = now()
            where s.project_id = p_project_id;
        state := jsonb_build_object('nothing_stale', true, 'stale_md5', md5(stale::text));
        return next;
        return;
    end if;

    if full_rebuild then
        drop table if exists pg_temp.idmerge_report_events;
        delete from idmerge.report_person_ids where project_id = p_project_id;
        update idmerge.report_event_names as n set people = 0 where n.project_id = p_project_id;
        delete from idmerge.report_person_events where project_id = p_project_id;
        -- (Where each row is stored: only a props part on another connection reads that.)
        create temp table idmerge_report_events on commit drop as
        select r.distinct_id, r.ingested_distinct_id, r.event, idmerge.report_ms(r.time) as ms, r.ingest_seq as seq,
               r.properties, null::regclass as event_partition, null::tid as event_ctid
        from idmerge.resolved_events as r
        where r.project_id = p_project_id;
        -- The value keys: those a sample of the events (the first 100,000 rows) carries as JSON
        -- numbers, at most 8, the rarest first (the cheapest to store; a value such as
        -- revenue is on few events). The set only decides which keys attribution reads without
        -- a join; any other key is read from report_person_props, with the same answer.
        value_keys := array(
            select k.key
            from (select e.properties from pg_temp.idmerge_report_events as e limit 100000) as e
            cross join lateral jsonb_object_keys(e.properties) as k (key)
            where k.key <> all(excluded_keys) and jsonb_typeof(e.properties -> k.key) = 'number'
            group by k.key
            order by count(*), k.key
            limit 8);
    else
        -- A few people: their rows by index and serially (the planner would scan the tables
        -- for a few thousand people; restored below), with generic plans (as above).
        perform set_config('enable_seqscan', 'off', true);
        perform set_config('max_parallel_workers_per_gather', '0', true);
        perform set_config('plan_cache_mode', 'force_generic_plan', true);
        -- The stale people's ids leave report_person_ids first; what the delete returns says
        -- which of their ids are not changed ones, and how many people leave the tables
        -- (report_state.people moves by the difference, never by a recount of every person).
        with gone as (
            delete from idmerge.report_person_ids where project_id = p_project_id and distinct_id = any(stale)
            returning ingested_distinct_id, distinct_id
        )
        select coalesce(array_agg(distinct gone.ingested_distinct_id), '{}'), count(distinct gone.distinct_id)
        into gone_ids, gone_people
        from gone;
        -- The stale people's other events. Those of changed ids are read already (every one
        -- belongs to a stale person); the others are unchanged since as_of_seq, so their ids
        -- are those report_person_ids held for the stale people (report_people_ids: the same
        -- rule). As report_write_props reads them too.
        insert into pg_temp.idmerge_report_events
        select r.distinct_id, r.ingested_distinct_id, r.event, idmerge.report_ms(r.time) as ms, r.ingest_seq as seq,
               r.properties, r.event_partition, r.event_ctid
        from idmerge.resolved_events_located as r
        where r.project_id = p_project_id
            and r.ingested_distinct_id = any(array(select unnest(gone_ids) except select unnest(changed)))
            and r.distinct_id = any(stale);
        perform set_config('enable_seqscan', 'on', true);
        perform set_config('max_parallel_workers_per_gather', parallel_workers, true);
        perform set_config('plan_cache_mode', 'force_custom_plan', true);
    end if;
    -- stale_md5: the next steps check that they were given the same stale people. snapshot:
    -- report_write_props, on another connection, checks that it reads in this one.
    state := jsonb_build_object(
        'snapshot_seq', snapshot_seq, 'as_of_seq', as_of, 'total', total, 'value_keys', to_jsonb(value_keys),
        'people_gone', gone_people, 'stale_md5', coalesce(md5(stale::text), 'everyone'),
        'snapshot', pg_current_snapshot()::text,
        'events', (select count(*) from pg_temp.idmerge_report_events));
    -- For a props part on another connection: where the events read are stored, and whose
    -- they are, as three arrays of one order (report_write_props reads those rows again by
    -- ctid: a tenth of the cost of reading them by index again; BENCHMARKS.md, "Nightly job,
    -- session 8").
    if not full_rebuild then
        select array_agg(e.event_partition::oid), array_agg(e.event_ctid), array_agg(e.distinct_id::text)
        into props_partitions, props_ctids, props_people
        from pg_temp.idmerge_report_events as e;
    end if;
    return next;
end
$$;

comment on function idmerge.refresh_report_tables_begin(integer, boolean) is
    'Nightly, first step of a refresh: the stale people (null: all) and their live events, in pg_temp.idmerge_report_events. Run in a REPEATABLE READ transaction; then refresh_report_tables_finish with what it returns.';

-- A project's report_person_props rows of p_stale (null: every person's) rewritten from the
-- stale people's live events: pg_temp.idmerge_report_events as refresh_report_tables_begin
-- fills it, or, when p_state is given (on the props part's connection, in begin's snapshot),
-- the same rows read again by ctid. p_stale, p_state and the three arrays must be what begin
-- returned: its props_partitions, props_ctids and props_people, one element per event (where
-- it is stored, and whose it is). Checked: the digest of p_stale; the snapshot (a ctid names
-- a row version only in the snapshot that read it); the number of events, each found once, in
-- this snapshot, in a partition of idmerge.events, and of this project; each person a stale
-- one. Not checked: that each person is the one begin read for that event (props_people is
-- taken as begin returned it).
drop function if exists idmerge.report_write_props(integer, text[], jsonb);

create or replace function idmerge.report_write_props(
    p_project_id integer, p_stale text[], p_state jsonb default null, p_partitions oid[] default null,
    p_ctids tid[] default null, p_people text[] default null)
returns void
language plpgsql
set plan_cache_mode = force_custom_plan
set enable_seqscan = on
set enable_mergejoin = on
set enable_nestloop = on
set jit = off
as $$
declare
    events_source text;
    insert_statement text;
    -- The events found by ctid.
    found bigint;
begin
    if p_state is not null and (p_stale is null or p_state ->> 'as_of_seq' is null or not (p_state ? 'snapshot')
                                or p_state ->> 'stale_md5' is distinct from md5(p_stale::text)) then
        raise exception 'report_write_props needs the stale people and the state that refresh_report_tables_begin returned for an incremental refresh'
            using errcode = 'invalid_parameter_value';
    end if;
    if p_state is not null and (current_setting('transaction_isolation') not in ('repeatable read', 'serializable')
                                or pg_current_snapshot()::text is distinct from p_state ->> 'snapshot') then
        raise exception 'report_write_props must run in a REPEATABLE READ transaction, in the snapshot of refresh_report_tables_begin'
            using errcode = 'invalid_transaction_state';
    end if;
    if p_state is not null and (
            p_partitions is null or p_ctids is null or p_people is null
            or cardinality(p_partitions) <> (p_state ->> 'events')::bigint
            or cardinality(p_ctids) <> cardinality(p_partitions) or cardinality(p_people) <> cardinality(p_partitions)
            or exists (select p.id from unnest(p_people) as p (id) except select s.id from unnest(p_stale) as s (id))
            -- Each event once (hashed: a count(distinct) of the pairs sorts records, 5 ms more).
            or (select count(*) from (select distinct x.partition, x.ctid from unnest(p_partitions, p_ctids) as x (partition, ctid)) as d)
               <> cardinality(p_ctids)) then
        raise exception 'report_write_props needs the events that refresh_report_tables_begin returned (props_partitions, props_ctids, props_people), one element each per event of a stale person'
            using errcode = 'invalid_parameter_value';
    end if;
    if p_stale is null then
        delete from idmerge.report_person_props where project_id = p_project_id;
    else
        -- A few people: by index and serially, with generic plans (as in
        -- refresh_report_tables_begin; restored below).
        perform set_config('enable_seqscan', 'off', true);
        perform set_config('max_parallel_workers_per_gather', '0', true);
        perform set_config('plan_cache_mode', 'force_generic_plan', true);
        delete from idmerge.report_person_props where project_id = p_project_id and distinct_id = any(p_stale);
    end if;
    -- The events: the temp table, or each partition's rows by ctid ("Tid Scan", sequential
    -- scans being off), paired with whose they are. Only partitions of idmerge.events.
    if p_state is not null and exists (
            select from (select distinct x.partition from unnest(p_partitions) as x (partition)) as p
            where p.partition is null or p.partition not in (
                select i.inhrelid from pg_catalog.pg_inherits as i where i.inhparent = 'idmerge.events'::regclass)) then
        raise exception 'report_write_props: props_partitions must name partitions of idmerge.events, as refresh_report_tables_begin returned them'
            using errcode = 'invalid_parameter_value';
    end if;
    if p_state is null then
        events_source := 'select t.distinct_id, t.ms, t.seq, t.properties from pg_temp.idmerge_report_events as t';
    else
        -- Only the project's rows (another project's at a ctid given would not be found).
        events_source := coalesce(nullif(array_to_string(array(
            select format(
                'select h.person as distinct_id, idmerge.report_ms(r.time) as ms, r.seq, r.properties
                 from unnest($3, $4, $5) as h (partition, ctid, person)
                 inner join %s as r on r.ctid = h.ctid and r.project_id = $1
                 where h.partition = %s', p.partition::regclass, p.partition)
            from (select distinct x.partition from unnest(p_partitions) as x (partition)) as p
            order by p.partition), ' union all '), ''),
            'select null::text as distinct_id, null::bigint as ms, null::bigint as seq, null::jsonb as properties
             where false');
    end if;
    -- The sorts and groupings compare ids in the "C" collation (as in
    -- refresh_report_tables_finish).
    insert_statement := format($insert$
    insert into idmerge.report_person_props (project_id, key, distinct_id, times, seqs, vals)
    select $1, kv.key collate "C", e.distinct_id collate "C",
           array_agg(e.ms order by e.ms, e.seq), array_agg(e.seq order by e.ms, e.seq),
           array_agg(kv.value order by e.ms, e.seq)
    from (%s) as e
    -- jsonb_object_keys returns a key per call; jsonb_each fills a tuplestore per event (2.4%%
    -- of an incremental refresh's instructions more).
    cross join lateral jsonb_object_keys(e.properties) as k (key)
    cross join lateral (select k.key, e.properties -> k.key as value) as kv
    where k.key <> all($2) and jsonb_typeof(kv.value) <> 'null'
    group by 2, 3
    order by 2, 3$insert$,
        case when p_state is null then events_source else 'select * from located' end);
    if p_state is null then
        execute insert_statement using p_project_id, idmerge.report_excluded_keys();
    else
        -- Every event given found (each is given once, checked above): a ctid of a row version
        -- this snapshot does not see (another begin's, say), or of another project's row, is
        -- refused.
        execute format(
            'with located as materialized (%s), written as (%s returning 1)
             select count(*) from located', events_source, insert_statement)
        into found
        using p_project_id, idmerge.report_excluded_keys(), p_partitions, p_ctids, p_people;
        if found <> cardinality(p_ctids) then
            raise exception 'report_write_props: % of the % events given were found in this snapshot; give the events that refresh_report_tables_begin returned in it',
                found, cardinality(p_ctids)
                using errcode = 'invalid_parameter_value';
        end if;
    end if;
    -- On a connection of its own, committed before the other part: whom it rewrote, for the
    -- next refresh should that part never commit (migrations/0017_report_props_written.sql).
    if p_state is not null then
        insert into idmerge.report_props_written (project_id, as_of_seq, people)
        values (p_project_id, (p_state ->> 'as_of_seq')::bigint, p_stale);
    end if;
end
$$;

comment on function idmerge.report_write_props(integer, text[], jsonb, oid[], tid[], text[]) is
    'Nightly: rewrites a project''s report_person_props rows of the stale people (null: all) from their live events (pg_temp.idmerge_report_events, or the rows refresh_report_tables_begin located, read again by ctid).';

create or replace function idmerge.refresh_report_tables_finish(
    p_project_id integer, p_stale text[], p_state jsonb, p_tables text default 'all')
returns table (people bigint, full_rebuild boolean)
language plpgsql
set plan_cache_mode = force_custom_plan
set client_min_messages = warning
set enable_seqscan = on
set enable_mergejoin = on
set enable_nestloop = on
set jit = off
as $$
#variable_conflict use_column
declare
    parallel_workers constant text := current_setting('max_parallel_workers_per_gather');
    value_keys text[];
    -- Each event's amounts of the value keys, as an expression over e.properties.
    amounts_expression text;
begin
    if p_tables is null or p_tables not in ('all', 'rest') then
        raise exception 'p_tables must be ''all'' or ''rest'', not %', coalesce(p_tables, 'null')
            using errcode = 'invalid_parameter_value';
    end if;
    full_rebuild := p_stale is null;
    -- Nothing was stale: begin moved the mark.
    if (p_state ->> 'nothing_stale')::boolean then
        people := 0;
        return next;
        return;
    end if;
    if to_regclass('pg_temp.idmerge_report_events') is null or not (p_state ? 'snapshot_seq')
            or p_state ->> 'stale_md5' is distinct from coalesce(md5(p_stale::text), 'everyone') then
        raise exception 'refresh_report_tables_finish must follow refresh_report_tables_begin in its transaction, with what it returned'
            using errcode = 'invalid_transaction_state';
    end if;
    value_keys := array(select jsonb_array_elements_text(p_state -> 'value_keys'));

    if not full_rebuild then
        -- The stale people's rows by index and serially, with generic plans (as in begin).
        perform set_config('enable_seqscan', 'off', true);
        perform set_config('max_parallel_workers_per_gather', '0', true);
        perform set_config('plan_cache_mode', 'force_generic_plan', true);
        -- report_event_names.people: less the rows going (one per event name and person).
        with gone as (
            delete from idmerge.report_person_events where project_id = p_project_id and distinct_id = any(p_stale)
            returning event
        )
        update idmerge.report_event_names as n set people = n.people - d.rows
        from (select gone.event, count(*) as rows from gone group by gone.event) as d
        where n.project_id = p_project_id and n.event = d.event;
        -- What follows reads the small temp table of their events: back to the planner's own
        -- choice (off, it would price every plan of it as a disabled scan; restored at exit).
        perform set_config('enable_seqscan', 'on', true);
        perform set_config('max_parallel_workers_per_gather', parallel_workers, true);
        perform set_config('plan_cache_mode', 'force_custom_plan', true);
        -- Without statistics on the temp table the planner merge-joins a few thousand rows
        -- with three sorts; hashing them costs less (restored at exit by the SET clause).
        perform set_config('enable_mergejoin', 'off', true);
    end if;

    -- The sorts and groupings below compare ids in the "C" collation: byte order, the same
    -- groups (equality does not depend on a deterministic collation), and many times cheaper
    -- to sort than the database's linguistic collation, for a rebuild's millions of rows.
    insert into idmerge.report_person_ids (project_id, ingested_distinct_id, distinct_id)
    select distinct p_project_id, e.ingested_distinct_id collate "C", e.distinct_id collate "C"
    from pg_temp.idmerge_report_events as e;

    -- Number the names not seen before (after the numbers given).
    insert into idmerge.report_event_names (project_id, event, id)
    select p_project_id, n.event,
           (select coalesce(max(x.id), -1) from idmerge.report_event_names as x where x.project_id = p_project_id)
           + row_number() over (order by n.event)
    from (select distinct e.event from pg_temp.idmerge_report_events as e) as n
    where not exists (
        select 1 from idmerge.report_event_names as x where x.project_id = p_project_id and x.event = n.event);

    -- The amounts: per event, an array of the value keys' amounts ($2 holds the keys; only
    -- their positions are written into the text), aggregated in the order of times into
    -- [event][key]; null for a row whose amounts are all 0 ($3, that many zeros).
    amounts_expression := case
        when cardinality(value_keys) = 0 then 'null::double precision[]'
        else format(
            'case when bool_or(%1$s <> $3) then array_agg(%1$s order by e.ms, e.seq) end',
            format('array[%s]', array_to_string(array(
                select format('idmerge.attribution_amount(e.properties -> $2[%s])', i)
                from generate_subscripts(value_keys, 1) as i), ', ')))
    end;
    -- Each person's timeline (their events' keys, sorted) on every row of theirs.
    execute format($insert$
    insert into idmerge.report_person_events
        (project_id, event, distinct_id, first_ms, times, seqs, amounts, person_keys)
    with timelines as (
        select e.distinct_id collate "C" as distinct_id,
               array_agg(idmerge.report_timeline_key(n.id, e.ms) order by idmerge.report_timeline_key(n.id, e.ms))
                   as person_keys
        from pg_temp.idmerge_report_events as e
        inner join idmerge.report_event_names as n on n.project_id = $1 and n.event = e.event
        group by 1
    )
    select $1, g.event, g.distinct_id, g.first_ms, g.times, g.seqs, g.amounts, t.person_keys
    from (
        select e.event collate "C" as event, e.distinct_id collate "C" as distinct_id, min(e.ms) as first_ms,
               array_agg(e.ms order by e.ms, e.seq) as times, array_agg(e.seq order by e.ms, e.seq) as seqs,
               %s as amounts
        from pg_temp.idmerge_report_events as e
        group by 1, 2
    ) as g
    inner join timelines as t on t.distinct_id = g.distinct_id
    order by g.event, g.distinct_id$insert$, amounts_expression)
    using p_project_id, value_keys, array_fill(0::double precision, array[cardinality(value_keys)]);
    -- report_event_names.people: plus the rows written (one per event name and person).
    update idmerge.report_event_names as n set people = n.people + g.rows
    from (
        select e.event, count(distinct e.distinct_id collate "C") as rows
        from pg_temp.idmerge_report_events as e
        group by e.event
    ) as g
    where n.project_id = p_project_id and n.event = g.event;

    if p_tables = 'all' then
        perform idmerge.report_write_props(p_project_id, p_stale);
    end if;

    select count(distinct e.distinct_id collate "C") into people from pg_temp.idmerge_report_events as e;
    -- The newest time: after a full rebuild a scan; else the old newest and the events since
    -- (report_newest_ms reads the old as_of_seq, not yet moved).
    insert into idmerge.report_state as s (project_id, as_of_seq, built_at, people, newest_ms, value_keys)
    values (
        p_project_id, (p_state ->> 'snapshot_seq')::bigint, now(),
        case
            when full_rebuild then people
            else coalesce((p_state ->> 'total')::bigint, 0) - (p_state ->> 'people_gone')::bigint + people
        end,
        case
            when full_rebuild then
                (select idmerge.report_ms(max(e.time)) from idmerge.events as e where e.project_id = p_project_id)
            else idmerge.report_newest_ms(p_project_id)
        end,
        value_keys)
    on conflict (project_id) do update set
        as_of_seq = excluded.as_of_seq, built_at = excluded.built_at, people = excluded.people,
        newest_ms = excluded.newest_ms, value_keys = excluded.value_keys;
    return next;
end
$$;

comment on function idmerge.refresh_report_tables_finish(integer, text[], jsonb, text) is
    'Nightly, second step of a refresh: writes the derived report tables from what refresh_report_tables_begin found and returned (''rest'': all but report_person_props). Returns the people rewritten.';

-- Both steps, every table: the refresh in one call (the nightly job's, when it has one
-- connection for it). Returns the people rewritten.
create or replace function idmerge.refresh_report_tables(p_project_id integer, p_full boolean default false)
returns table (people bigint, full_rebuild boolean)
language plpgsql
set client_min_messages = warning
as $$
declare
    begun record;
begin
    select * into strict begun from idmerge.refresh_report_tables_begin(p_project_id, p_full);
    return query
    select * from idmerge.refresh_report_tables_finish(p_project_id, begun.stale, begun.state, 'all');
end
$$;

comment on function idmerge.refresh_report_tables(integer, boolean) is
    'Nightly: brings a project''s derived report tables up to the live view (stale people only, or all). Run in a REPEATABLE READ transaction.';
