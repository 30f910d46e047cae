-- idmerge.profile_update_problem: why one Engage update cannot be applied, judged on the
-- record alone (its shape); null when it is well formed. Grain: one row per update.
--
-- Rules (mixpanel-reference.md section 3; the [U] points are decided here, and in
-- docs/profiles.md):
--   P-R2   `$distinct_id` names the profile: a string or a number that is not blank or a
--          placeholder (decisions.md "Placeholder values are never identifiers").
--          Exactly one operation per update; other top-level members (`$token`, `$ip`,
--          `$device_id`, `$user_id`, ... which the SDKs send) are ignored.
--          `$ignore_time` and `$ignore_alias` are booleans. A member sent as null counts as not
--          sent (RudderStack's transformer sends `"$time": null`). `$time` (optional) is seconds since
--          the epoch, or milliseconds above 1e11, not before 1971 nor more than an hour ahead
--          (the event rules of decisions.md "Ingestion").
--   P-R3, P-R4, P-R6, P-R8  `$set`, `$set_once`, `$append`, `$remove` take an object.
--   P-R5   `$add` takes an object of numbers.
--   P-R7   `$union` takes an object of lists ([U] d: a scalar is refused, as the schema says).
--   P-R9   `$unset` takes a list of property names.
--   P-R10  `$delete` ignores its value.
-- Problems that depend on the profile (`$add` to a text, `$append` to a non-list) are found
-- when the update is applied: idmerge.profile_step.

create or replace function idmerge.profile_update_problem(
    p_record jsonb, p_now timestamptz, out field text, out reason text)
language plpgsql immutable as $$
declare
    operations text[];
    operation text;
    value jsonb;
    member record;
    time_ms numeric;
begin
    if jsonb_typeof(p_record) is distinct from 'object' then
        field := '(record)';
        reason := 'a profile update must be a JSON object such as {"$distinct_id": "u1", "$set": {...}}';
        return;
    end if;

    if not p_record ? '$distinct_id' then
        field := '$distinct_id';
        reason := 'missing: every profile update names the $distinct_id of its profile';
        return;
    end if;
    if jsonb_typeof(p_record -> '$distinct_id') not in ('string', 'number') then
        field := '$distinct_id';
        reason := format('must be a string, not %s', jsonb_typeof(p_record -> '$distinct_id'));
        return;
    end if;
    if idmerge.identifier_text(p_record -> '$distinct_id') is null then
        field := '$distinct_id';
        reason := format('%s is blank or a placeholder, never an identifier', p_record -> '$distinct_id');
        return;
    end if;

    select array_agg(key order by key) into operations
    from jsonb_object_keys(p_record) as key
    where key in ('$set', '$set_once', '$add', '$append', '$union', '$remove', '$unset', '$delete');
    if operations is null then
        field := '(record)';
        reason := 'no operation: expected one of $set, $set_once, $add, $append, $union, $remove, $unset, $delete';
        return;
    end if;
    if cardinality(operations) > 1 then
        field := '(record)';
        reason := format('%s operations (%s) in one update; send one operation per update',
            cardinality(operations), array_to_string(operations, ', '));
        return;
    end if;

    foreach operation in array array['$ignore_time', '$ignore_alias'] loop
        if p_record ? operation and jsonb_typeof(p_record -> operation) not in ('boolean', 'null') then
            field := operation;
            reason := format('must be true or false, not %s', p_record -> operation);
            return;
        end if;
    end loop;

    if p_record ? '$time' and jsonb_typeof(p_record -> '$time') <> 'null' then
        if jsonb_typeof(p_record -> '$time') <> 'number' then
            field := '$time';
            reason := 'must be a number: seconds since the epoch, or milliseconds';
            return;
        end if;
        time_ms := (p_record ->> '$time')::numeric;
        if time_ms <= 1e11 then
            time_ms := time_ms * 1000;
        end if;
        if time_ms < 31536000000 then
            field := '$time';
            reason := 'before 1971-01-01';
            return;
        end if;
        if time_ms > extract(epoch from p_now) * 1000 + 3600000 then
            field := '$time';
            reason := 'more than 1 hour after the moment of import';
            return;
        end if;
    end if;

    operation := operations[1];
    value := p_record -> operation;
    if operation in ('$set', '$set_once', '$add', '$append', '$union', '$remove') then
        if jsonb_typeof(value) <> 'object' then
            field := operation;
            reason := format('must be an object of property names and values, not %s', jsonb_typeof(value));
            return;
        end if;
        for member in select e.key, e.value from jsonb_each(value) as e loop
            if operation = '$add' and jsonb_typeof(member.value) <> 'number' then
                field := operation || '.' || member.key;
                reason := format('$add takes a number (negative to decrement), not %s', member.value);
                return;
            end if;
            if operation = '$union' and jsonb_typeof(member.value) <> 'array' then
                field := operation || '.' || member.key;
                reason := format('$union takes a list of values, not %s', member.value);
                return;
            end if;
        end loop;
    elsif operation = '$unset' then
        if jsonb_typeof(value) <> 'array'
            or exists (select 1 from jsonb_array_elements(value) as e where jsonb_typeof(e) <> 'string') then
            field := operation;
            reason := 'must be a list of property names, such as ["plan", "trial_ends"]';
            return;
        end if;
    end if;
end
$$;

comment on function idmerge.profile_update_problem(jsonb, timestamptz) is
    'Why an Engage update is malformed (field and reason), or nulls when it is well formed; p_now is the moment of import.';
