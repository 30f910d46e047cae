-- idmerge.ensure_event_partitions: creates the monthly partitions of idmerge.events that
-- cover [from_time, to_time]. Grain: one partition per calendar month (UTC).
-- Serialized by an advisory lock, so concurrent imports never race on the same partition.

create or replace function idmerge.ensure_event_partitions(from_time timestamptz, to_time timestamptz)
returns integer
language plpgsql as $$
declare
    month_start timestamptz;
    partition_name text;
    created integer := 0;
begin
    if from_time is null or to_time is null then
        return 0;
    end if;
    perform pg_advisory_xact_lock(hashtext('idmerge.ensure_event_partitions'));
    month_start := date_trunc('month', from_time at time zone 'UTC') at time zone 'UTC';
    while month_start <= to_time loop
        partition_name := 'events_' || to_char(month_start at time zone 'UTC', 'YYYY_MM');
        if to_regclass(format('idmerge.%I', partition_name)) is null then
            execute format(
                'create table idmerge.%I partition of idmerge.events for values from (%L) to (%L)',
                partition_name, month_start, month_start + interval '1 month');
            created := created + 1;
        end if;
        month_start := month_start + interval '1 month';
    end loop;
    return created;
end
$$;

comment on function idmerge.ensure_event_partitions(timestamptz, timestamptz) is
    'Creates the monthly partitions of idmerge.events covering [from_time, to_time]; returns how many it created.';
