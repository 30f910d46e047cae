-- idmerge.nightly_rewrite_chunk: one committed step of the nightly job. Takes up to
-- chunk_size identity mappings the events do not reflect yet (oldest first, made at or
-- before max_seq: links made while a run works are left to the next run), rewrites
-- distinct_id on exactly the events they change, and marks them rewritten.
--
-- Cost grows with the events changed, not the table: each mapping is a lookup on the
-- events' (project_id, ingested_distinct_id, ...) index, forced by the function's
-- planner settings, never a scan of every event. (JIT is off: the disabled plans' huge
-- costs would otherwise trigger compilation that costs more than the step itself; and plans
-- are always custom: after five calls plpgsql would switch to a generic plan, which once
-- turned a 50 ms step into 20 s.)
-- Safe against concurrent imports: a mapping changed while the step runs (a newer seq) is
-- not marked, so it stays pending and the live view keeps correcting it.

drop function if exists idmerge.nightly_rewrite_chunk(integer, integer);

create or replace function idmerge.nightly_rewrite_chunk(p_project_id integer, chunk_size integer, max_seq bigint)
returns table (links bigint, rows_rewritten bigint)
language plpgsql
set enable_hashjoin = off
set enable_mergejoin = off
set enable_seqscan = off
set jit = off
set plan_cache_mode = force_custom_plan
as $$
declare
    link_count bigint;
    row_count_rewritten bigint;
    -- The chunk's mappings, as three arrays in one order (seq, then id: unique), not a temp
    -- table: creating one (and its TOAST table, for the text columns) and dropping it cost
    -- about 3 ms a chunk in the file system (BENCHMARKS.md, "Nightly job, session 8").
    ids text[];
    canonical_ids text[];
    seqs bigint[];
begin
    select coalesce(array_agg(c.id order by c.seq, c.id), '{}'),
           coalesce(array_agg(c.canonical_id order by c.seq, c.id), '{}'),
           coalesce(array_agg(c.seq order by c.seq, c.id), '{}')
    into ids, canonical_ids, seqs
    from (
        select m.id, m.canonical_id, m.seq
        from idmerge.identity_map as m
        where m.project_id = p_project_id and not m.rewritten and m.seq <= max_seq
        order by m.seq, m.id
        limit chunk_size
    ) as c;

    link_count := cardinality(ids);
    if link_count = 0 then
        links := 0;
        rows_rewritten := 0;
        return next;
        return;
    end if;

    -- (The custom plan knows the arrays' lengths: unnest's row estimate.)
    update idmerge.events as e
    set distinct_id = c.canonical_id, resolved_seq = c.seq
    from unnest(ids, canonical_ids, seqs) as c (id, canonical_id, seq)
    where e.project_id = p_project_id
        and e.ingested_distinct_id = c.id
        and e.resolved_seq < c.seq;

    get diagnostics row_count_rewritten = row_count;

    update idmerge.identity_map as m
    set rewritten = true, updated_at = now()
    from unnest(ids, seqs) as c (id, seq)
    where m.project_id = p_project_id and m.id = c.id and m.seq = c.seq;

    links := link_count;
    rows_rewritten := row_count_rewritten;
    return next;
end
$$;

comment on function idmerge.nightly_rewrite_chunk(integer, integer, bigint) is
    'One committed step of the nightly job: writes up to chunk_size pending identity mappings (seq <= max_seq) into idmerge.events.';
