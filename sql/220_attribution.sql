-- idmerge.attribution: campaign (touchpoint) attribution of a conversion event.
-- Grain: one row per touchpoint value (and '(not set)' for conversions without a touch).
--
-- Rules (decisions.md "Attribution"; mixpanel-reference.md section 6, A1-A12):
--   * conversions: every p_conversion event of the project (UTC dates p_from_date..p_to_date,
--     inclusive, bound the conversion's time); p_per_user 'first' or 'last' keeps one
--     conversion per person (A7);
--   * touchpoints: the converting person's events, resolved live (anonymous touches count
--     once the device is linked, A12), in [conversion time - lookback, conversion time] that
--     carry the touchpoint property, the conversion event itself included; ordered by event
--     time, then ingest sequence;
--   * models (A4, A5): first-touch, last-touch, linear (per touch event), participation (1 to
--     every distinct value), time-decay (2^(-age / 7 days), normalised to 1), u-shaped
--     (40/20/40), j-shaped (20/20/60), inverse-j (60/20/20), custom (p_weights = first,
--     middle, last in percent); with two touches the first and last weights are scaled to
--     sum 1, with one touch it takes everything; the middle share is split evenly;
--   * a conversion with no touch is credited to '(not set)' (A3);
--   * people the derived tables hold current (sql/150_report_tables.sql) are read from
--     report_person_events (conversions) and report_person_props (value and touchpoint:
--     one row per person, the lookback window a slice of sorted arrays); the stale ones, and
--     everyone when the project has no derived tables or a property is an identity field the
--     tables leave out, from the live view. Same answer either way;
--   * value = weight * the conversion's p_value property (numbers, or numeric strings; else
--     0); conversions = the weights summed; share = value / total value (conversions when
--     no value property is given).
--
-- Example: select * from idmerge.attribution('default', 'Purchase', 'utm_source',
--              p_value => 'revenue', p_model => 'first-touch');

-- The credited amount of a conversion's value property: numbers, or numeric strings, up to
-- 1e100 in magnitude (so sums stay finite); anything else (and no value property) counts 0,
-- and so do values under 1e-200 in magnitude: the cast to double precision fails on those
-- that round to zero (1e-400), and a share of one that tiny beside a total near 1e100 fails
-- the same way. Strings get the same bounds as numbers (a 40-digit mantissa with an exponent
-- reaches 1e139), and only ASCII white space around them: the regular expression's \s also
-- takes Unicode spaces (U+2003), which the cast refuses. A negative zero counts +0 (the two
-- routes of a report must print the same 0). Never null; never fails. One CASE expression, so
-- that the planner inlines it (a FROM clause would make it a function call per row).
create or replace function idmerge.attribution_amount(v jsonb)
returns double precision
language sql immutable parallel safe as $$
    select case
        when v is null then 0
        when jsonb_typeof(v) = 'number' then
            case when abs(v::numeric) <= 1e100 and abs(v::numeric) >= 1e-200 then v::double precision + 0 else 0 end
        when (v #>> '{}') ~ '^[ \t\n\r\f\v]*-?[0-9]{1,40}(\.[0-9]{1,40})?([eE][-+]?[0-9]{1,2})?[ \t\n\r\f\v]*$' then
            case
                when abs((v #>> '{}')::numeric) <= 1e100 and abs((v #>> '{}')::numeric) >= 1e-200
                    then (v #>> '{}')::double precision + 0
                else 0
            end
        else 0
    end
$$;

create or replace function idmerge.attribution(
    p_project text,
    p_conversion text,
    p_touchpoint text,
    p_value text default null,
    p_model text default 'last-touch',
    p_lookback_seconds double precision default 2592000,
    p_per_user text default null,
    p_from_date date default null,
    p_to_date date default null,
    p_weights double precision[] default null
)
returns table (touchpoint text, conversions double precision, value double precision, share double precision)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set jit = off
as $$
declare
    project_id_value integer;
    w_first double precision;
    w_middle double precision;
    w_last double precision;
    stale text[];
    from_ms bigint;
    to_ms bigint;
begin
    select id into project_id_value from idmerge.projects where name = p_project;
    if project_id_value is null then
        raise exception 'no project named %', p_project using errcode = 'invalid_parameter_value';
    end if;
    if p_model not in ('first-touch', 'last-touch', 'linear', 'participation', 'time-decay', 'u-shaped',
                       'j-shaped', 'inverse-j', 'custom') then
        raise exception 'unknown attribution model %', p_model using errcode = 'invalid_parameter_value';
    end if;
    if p_per_user is not null and p_per_user not in ('first', 'last') then
        raise exception 'per-user must be first or last, not %', p_per_user using errcode = 'invalid_parameter_value';
    end if;
    if p_lookback_seconds is null or p_lookback_seconds < 0 or p_lookback_seconds = 'NaN'::double precision then
        raise exception 'the lookback window must be a number of seconds, not negative'
            using errcode = 'invalid_parameter_value';
    end if;
    -- Longer than any two timestamps lie apart (PostgreSQL's whole range is under 1e13 s), so
    -- the same answer; and the milliseconds stay within bigint (1e16 and more failed there).
    p_lookback_seconds := least(p_lookback_seconds, 1e13);
    case p_model
        when 'u-shaped' then w_first := 0.4; w_middle := 0.2; w_last := 0.4;
        when 'j-shaped' then w_first := 0.2; w_middle := 0.2; w_last := 0.6;
        when 'inverse-j' then w_first := 0.6; w_middle := 0.2; w_last := 0.2;
        when 'custom' then
            if p_weights is null or cardinality(p_weights) <> 3 or abs(p_weights[1] + p_weights[2] + p_weights[3] - 100) > 1e-9
                or least(p_weights[1], p_weights[2], p_weights[3]) < 0 then
                raise exception 'custom weights must be three percentages FIRST,MIDDLE,LAST summing to 100'
                    using errcode = 'invalid_parameter_value';
            end if;
            w_first := p_weights[1] / 100; w_middle := p_weights[2] / 100; w_last := p_weights[3] / 100;
        else null;
    end case;

    -- People whose derived rows are current are read from idmerge.report_person_events and
    -- report_person_props (sql/150_report_tables.sql); the stale ones, or everyone when the
    -- project has no derived tables or a property is not derived, from the live view.
    stale := idmerge.report_stale_people(project_id_value);
    if p_touchpoint = any(idmerge.report_excluded_keys()) or p_value = any(idmerge.report_excluded_keys()) then
        stale := null;
    end if;
    from_ms := idmerge.report_ms(p_from_date::timestamp at time zone 'UTC');
    to_ms := idmerge.report_ms((p_to_date + 1)::timestamp at time zone 'UTC');

    return query
    with events as (
        select r.distinct_id, r.event, r.time, r.ingest_seq, r.properties
        from idmerge.resolved_events as r
        where stale is null and r.project_id = project_id_value
        union all
        select r.distinct_id, r.event, r.time, r.ingest_seq, r.properties
        from idmerge.report_people_events(project_id_value, stale) as r
        where stale is not null
    ),
    -- Live part: the stale people (everyone without derived tables), from the live view.
    live_all_conversions as (
        select
            e.distinct_id,
            idmerge.report_ms(e.time) as ms,
            e.ingest_seq as seq,
            idmerge.attribution_amount(e.properties -> p_value) as amount,
            row_number() over (partition by e.distinct_id order by e.time, e.ingest_seq) as nth_first,
            row_number() over (partition by e.distinct_id order by e.time desc, e.ingest_seq desc) as nth_last
        from events as e
        where e.event = p_conversion
            and (p_from_date is null or e.time >= p_from_date::timestamp at time zone 'UTC')
            and (p_to_date is null or e.time < (p_to_date + 1)::timestamp at time zone 'UTC')
    ),
    live_conversions as (
        select row_number() over () as conversion_id, c.*
        from live_all_conversions as c
        where p_per_user is null
            or (p_per_user = 'first' and c.nth_first = 1)
            or (p_per_user = 'last' and c.nth_last = 1)
    ),
    live_touches as (
        select
            c.conversion_id,
            c.amount,
            t.properties ->> p_touchpoint as touch_value,
            (c.ms - idmerge.report_ms(t.time))::numeric / 1000 as age_seconds,
            row_number() over (partition by c.conversion_id order by t.time, t.ingest_seq) as position
        from live_conversions as c
        inner join events as t
            on t.distinct_id = c.distinct_id
            and idmerge.report_ms(t.time) >= ceil(c.ms - p_lookback_seconds * 1000)
            and (idmerge.report_ms(t.time) < c.ms or (idmerge.report_ms(t.time) = c.ms and t.ingest_seq <= c.seq))
            and t.properties ->> p_touchpoint is not null
    ),
    live_direct as (
        select c.amount, '(not set)'::text as touch_value, 1.0::double precision as weight
        from live_conversions as c
        where not exists (select 1 from live_touches as t where t.conversion_id = c.conversion_id)
    ),
    -- Derived part: everyone else, from report_person_events (the conversions) and
    -- report_person_props (the value and touchpoint properties), one row per person each.
    derived_people as not materialized (
        select
            pe.distinct_id,
            unnest(pe.times) as ms,
            unnest(pe.seqs) as seq,
            vp.seqs as value_seqs,
            vp.vals as value_vals,
            tp.times as touch_times,
            tp.seqs as touch_seqs,
            tp.vals as touch_vals
        from idmerge.report_person_events as pe
        left join idmerge.report_person_props as vp
            on vp.project_id = project_id_value and vp.key = p_value and vp.distinct_id = pe.distinct_id
        left join idmerge.report_person_props as tp
            on tp.project_id = project_id_value and tp.key = p_touchpoint and tp.distinct_id = pe.distinct_id
        where stale is not null
            and pe.project_id = project_id_value
            and pe.event = p_conversion
            and pe.distinct_id <> all(stale)
    ),
    derived_in_range as not materialized (
        select d.*
        from derived_people as d
        where (from_ms is null or d.ms >= from_ms) and (to_ms is null or d.ms < to_ms)
    ),
    derived_conversions as not materialized (
        select d.*
        from derived_in_range as d
        where p_per_user is null
        union all
        select d.distinct_id, d.ms, d.seq, d.value_seqs, d.value_vals, d.touch_times, d.touch_seqs, d.touch_vals
        from (
            select
                d.*,
                row_number() over (
                    partition by d.distinct_id
                    order by case when p_per_user = 'first' then d.ms else -d.ms end,
                             case when p_per_user = 'first' then d.seq else -d.seq end
                ) as nth
            from derived_in_range as d
            where p_per_user is not null
        ) as d
        where d.nth = 1
    ),
    -- A person's touches in the lookback are one slice of the property's arrays (sorted by
    -- time, then seq): from the first time >= conversion - lookback (lo) to the last
    -- (time, seq) <= the conversion's (hi). width_bucket counts the elements <= a bound.
    derived_bounds as not materialized (
        select
            c.ms,
            c.seq,
            idmerge.attribution_amount(c.value_vals[array_position(c.value_seqs, c.seq)]) as amount,
            c.touch_times as times,
            c.touch_seqs as seqs,
            c.touch_vals as vals,
            width_bucket(ceil(c.ms - p_lookback_seconds * 1000)::bigint - 1, c.touch_times) + 1 as lo,
            width_bucket(c.ms, c.touch_times) as hi0
        from derived_conversions as c
    ),
    -- hi: hi0 less the touches at the conversion's own time with a later seq (ties by seq).
    -- (Models other than first and last touch; those two read the derived tables through
    -- idmerge.attribution_derived, below.)
    derived_ends as not materialized (
        select
            b.*,
            case
                when b.hi0 >= b.lo and b.times[b.hi0] = b.ms then b.hi0 - (
                    select count(*) from unnest(b.times[b.lo:b.hi0], b.seqs[b.lo:b.hi0]) as u (ms, seq)
                    where u.ms = b.ms and u.seq > b.seq)
                else b.hi0
            end as hi
        from derived_bounds as b
    ),
    derived_slices as (
        select
            -row_number() over () as conversion_id,
            b.amount,
            b.ms,
            b.times,
            b.vals,
            b.lo,
            b.hi
        from derived_ends as b
        where p_model not in ('first-touch', 'last-touch')
    ),
    derived_direct as (
        select s.amount, '(not set)'::text as touch_value, 1.0::double precision as weight
        from derived_slices as s
        where p_model not in ('first-touch', 'last-touch') and not coalesce(s.hi >= s.lo, false)
    ),
    derived_touches as (
        select
            s.conversion_id,
            s.amount,
            u.val #>> '{}' as touch_value,
            (s.ms - u.ms)::numeric / 1000 as age_seconds,
            u.position
        from derived_slices as s
        cross join lateral unnest(s.times[s.lo:s.hi], s.vals[s.lo:s.hi]) with ordinality as u (ms, val, position)
        where s.hi >= s.lo and p_model not in ('first-touch', 'last-touch')
    ),
    touches as (
        select
            t.conversion_id,
            t.amount,
            t.touch_value,
            t.age_seconds,
            t.position,
            count(*) over (partition by t.conversion_id) as touch_count,
            row_number() over (partition by t.conversion_id, t.touch_value order by t.position) as nth_of_value
        from (select * from live_touches union all select * from derived_touches) as t
    ),
    weighted as (
        select
            touches.conversion_id,
            touches.amount,
            touches.touch_value,
            case
                when p_model = 'first-touch' then case when position = 1 then 1.0 else 0.0 end
                when p_model = 'last-touch' then case when position = touch_count then 1.0 else 0.0 end
                when p_model = 'linear' then 1.0 / touch_count
                when p_model = 'participation' then case when nth_of_value = 1 then 1.0 else 0.0 end
                when p_model = 'time-decay' then
                    power(2.0, -age_seconds / (7 * 86400.0))
                    / sum(power(2.0, -age_seconds / (7 * 86400.0))) over (partition by conversion_id)
                when touch_count = 1 then 1.0
                when touch_count = 2 then
                    case
                        when w_first + w_last = 0 then 0.5
                        when position = 1 then w_first / (w_first + w_last)
                        else w_last / (w_first + w_last)
                    end
                when position = 1 then w_first
                when position = touch_count then w_last
                else w_middle / (touch_count - 2)
            end as weight
        from touches
    ),
    credited as (
        select touch_value, weight, weight * amount as credited_value from weighted
        union all
        select touch_value, weight, weight * amount from live_direct
        union all
        select touch_value, weight, weight * amount from derived_direct
        union all
        -- First and last touch over the derived people: one element of each slice, summed per
        -- touchpoint value by a query of its own (sql/215_attribution_derived.sql), which can
        -- use parallel workers.
        select d.touchpoint, d.conversions, d.value
        from idmerge.attribution_derived(
            project_id_value, p_conversion, p_touchpoint, p_value, p_model = 'last-touch', p_lookback_seconds,
            p_per_user, from_ms, to_ms, stale) as d
        where stale is not null and p_model in ('first-touch', 'last-touch')
    ),
    per_touchpoint as (
        select touch_value, sum(weight) as conversions, sum(credited_value) as value
        from credited
        group by touch_value
        having sum(weight) > 0
    ),
    final as (
        select
            touch_value as touchpoint,
            per_touchpoint.conversions,
            per_touchpoint.value,
            case
                when p_value is null then per_touchpoint.conversions / nullif(sum(per_touchpoint.conversions) over (), 0)
                else per_touchpoint.value / nullif(sum(per_touchpoint.value) over (), 0)
            end as share
        from per_touchpoint
    )
    select final.touchpoint, final.conversions, final.value, coalesce(final.share, 0)
    from final
    order by final.value desc, final.conversions desc, final.touchpoint;
end
$$;

comment on function idmerge.attribution(text, text, text, text, text, double precision, text, date, date, double precision[]) is
    'Attribution report: one row per touchpoint value with credited conversions, value and share. Identities are live; lookback in seconds; dates UTC, bounding the conversion.';
