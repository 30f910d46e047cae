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
--   * value = weight * the conversion's p_value property (numbers, or numeric strings; else
--     0); conversions = the weights summed; share = value / total value (conversions when
--     no value property is given).
--
-- Example: select * from idmerge.attribution('default', 'Purchase', 'utm_source',
--              p_value => 'revenue', p_model => 'first-touch');

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
language plpgsql stable as $$
declare
    project_id_value integer;
    w_first double precision;
    w_middle double precision;
    w_last double precision;
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
    if p_lookback_seconds is null or p_lookback_seconds < 0 then
        raise exception 'the lookback window cannot be negative' using errcode = 'invalid_parameter_value';
    end if;
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

    return query
    with events as (
        select r.distinct_id, r.event, r.time, r.ingest_seq, r.properties
        from idmerge.resolved_events as r
        where r.project_id = project_id_value
    ),
    all_conversions as (
        select
            e.distinct_id,
            e.time,
            e.ingest_seq,
            -- Numbers, or numeric strings, up to 1e100 in magnitude (so sums stay finite);
            -- anything else counts 0.
            case
                when p_value is null then 0
                when jsonb_typeof(e.properties -> p_value) = 'number'
                    and abs((e.properties ->> p_value)::numeric) <= 1e100
                    then (e.properties ->> p_value)::double precision
                when (e.properties ->> p_value) ~ '^\s*-?[0-9]{1,40}(\.[0-9]{1,40})?([eE][-+]?[0-9]{1,2})?\s*$'
                    then (e.properties ->> p_value)::double precision
                else 0
            end as amount,
            row_number() over (partition by e.distinct_id order by e.time, e.ingest_seq) as nth_first,
            row_number() over (partition by e.distinct_id order by e.time desc, e.ingest_seq desc) as nth_last
        from events as e
        where e.event = p_conversion
            and (p_from_date is null or e.time >= p_from_date::timestamp at time zone 'UTC')
            and (p_to_date is null or e.time < (p_to_date + 1)::timestamp at time zone 'UTC')
    ),
    conversions as (
        select row_number() over () as conversion_id, c.*
        from all_conversions as c
        where p_per_user is null
            or (p_per_user = 'first' and c.nth_first = 1)
            or (p_per_user = 'last' and c.nth_last = 1)
    ),
    touches as (
        select
            c.conversion_id,
            c.amount,
            t.properties ->> p_touchpoint as touch_value,
            extract(epoch from c.time - t.time) as age_seconds,
            row_number() over (partition by c.conversion_id order by t.time, t.ingest_seq) as position,
            count(*) over (partition by c.conversion_id) as touch_count,
            row_number() over (
                partition by c.conversion_id, t.properties ->> p_touchpoint order by t.time, t.ingest_seq
            ) as nth_of_value
        from conversions as c
        inner join events as t
            on t.distinct_id = c.distinct_id
            and t.time >= c.time - make_interval(secs => p_lookback_seconds)
            and (t.time < c.time or (t.time = c.time and t.ingest_seq <= c.ingest_seq))
            and t.properties ->> p_touchpoint is not null
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
    direct as (
        select c.conversion_id, c.amount, '(not set)'::text as touch_value, 1.0::double precision as weight
        from conversions as c
        where not exists (select 1 from touches as t where t.conversion_id = c.conversion_id)
    ),
    credited as (
        select touch_value, weight, weight * amount as credited_value from weighted
        union all
        select touch_value, weight, weight * amount from direct
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
