-- idmerge.profile_step: the state transition of idmerge.profile_fold. It applies one Engage
-- operation to one profile. Grain: one call per (profile, update), in arrival order.
--
-- State (jsonb): {"exists": bool, "properties": {...}, "last_seen_at": text or null,
--   "created": bool (the profile was created, or created again, by this batch),
--   "changed": bool, "refused": [{"pos", "field", "reason"}]}.
-- Input: {"init": true, "exists", "properties", "last_seen_at"} once, first (the stored
--   profile), then one {"pos", "op", "value", "ignore_time", "at"} per update.
--
-- Rules (mixpanel-reference.md section 3):
--   P-R3   $set creates the profile and overwrites the keys it names.
--   P-R4   $set_once creates the profile and sets only keys the profile does not hold.
--   P-R5   $add adds to a number; a missing (or null) property starts from 0. [U] c: adding to
--          a value that is not a number refuses the update, which changes nothing.
--   P-R6   $append adds the value to the end of a list, duplicates allowed; a missing (or
--          null) property becomes a one-element list.
--   P-R7   $union adds each value the list does not hold yet, in the order given, once.
--   P-R8   $remove takes every element equal to the value out of the list; a missing
--          property or value changes nothing.
--          $append, $union and $remove on a property that holds something other than a
--          list refuse the update (an IDMerge decision).
--   P-R9   $unset removes the named properties.
--   P-R10  $delete removes the whole profile; later updates create a new one.
--   P-R13  $last_seen (last_seen_at) becomes the update's time ($time, else the moment of
--          import) unless $ignore_time is true; it never moves backwards.
--   $remove and $unset do not create a profile that does not exist; neither does an update
--   that is refused. Every check happens before anything changes: an update applies whole
--   or not at all.

create or replace function idmerge.profile_step(p_state jsonb, p_update jsonb)
returns jsonb
language plpgsql immutable as $$
declare
    present boolean := coalesce((p_state ->> 'exists')::boolean, false);
    props jsonb := coalesce(p_state -> 'properties', '{}');
    seen timestamptz := (p_state ->> 'last_seen_at')::timestamptz;
    created boolean := coalesce((p_state ->> 'created')::boolean, false);
    operation text := p_update ->> 'op';
    value jsonb := p_update -> 'value';
    member record;
    held jsonb;
    item jsonb;
    problem_field text;
    problem text;
begin
    if p_update ? 'init' then
        return jsonb_build_object(
            'exists', coalesce((p_update ->> 'exists')::boolean, false),
            'properties', coalesce(p_update -> 'properties', '{}'),
            'last_seen_at', p_update -> 'last_seen_at',
            'created', false, 'changed', false, 'refused', '[]'::jsonb);
    end if;

    -- Checks against the profile as it stands.
    if operation in ('$add', '$append', '$union', '$remove') then
        for member in select e.key, e.value from jsonb_each(value) as e loop
            held := props -> member.key;
            continue when held is null or jsonb_typeof(held) = 'null';
            if operation = '$add' and jsonb_typeof(held) <> 'number' then
                problem_field := operation || '.' || member.key;
                problem := format('cannot add to %s: the profile holds %s, not a number', member.key, held);
                exit;
            elsif operation <> '$add' and jsonb_typeof(held) <> 'array' then
                problem_field := operation || '.' || member.key;
                problem := format('cannot %s %s: the profile holds %s, not a list',
                    ltrim(operation, '$'), member.key, held);
                exit;
            end if;
        end loop;
    end if;
    if problem is not null then
        return jsonb_set(p_state, '{refused}', coalesce(p_state -> 'refused', '[]') || jsonb_build_array(
            jsonb_build_object('pos', p_update -> 'pos', 'field', problem_field, 'reason', problem)));
    end if;

    if operation = '$delete' then
        return p_state || jsonb_build_object(
            'exists', false, 'properties', '{}'::jsonb, 'last_seen_at', null, 'created', false, 'changed', true);
    end if;
    if operation in ('$remove', '$unset') and not present then
        return p_state;
    end if;
    if not present then
        created := true;
        present := true;
        props := '{}';
        seen := null;
    end if;

    if operation = '$set' then
        props := props || value;
    elsif operation = '$set_once' then
        props := value || props;
    elsif operation = '$unset' then
        props := props - array(select jsonb_array_elements_text(value));
    else
        for member in select e.key, e.value from jsonb_each(value) as e loop
            held := props -> member.key;
            if held is not null and jsonb_typeof(held) = 'null' then
                held := null;
            end if;
            if operation = '$add' then
                props := props || jsonb_build_object(
                    member.key, coalesce((held #>> '{}')::numeric, 0) + (member.value #>> '{}')::numeric);
            elsif operation = '$append' then
                props := props || jsonb_build_object(
                    member.key, coalesce(held, '[]') || jsonb_build_array(member.value));
            elsif operation = '$union' then
                held := coalesce(held, '[]');
                for item in select e from jsonb_array_elements(member.value) as e loop
                    if not exists (select 1 from jsonb_array_elements(held) as h where h = item) then
                        held := held || jsonb_build_array(item);
                    end if;
                end loop;
                props := props || jsonb_build_object(member.key, held);
            elsif operation = '$remove' and held is not null then
                props := props || jsonb_build_object(member.key, (
                    select coalesce(jsonb_agg(h.element order by h.ordinal), '[]')
                    from jsonb_array_elements(held) with ordinality as h (element, ordinal)
                    where h.element <> member.value));
            end if;
        end loop;
    end if;

    if not coalesce((p_update ->> 'ignore_time')::boolean, false) then
        seen := greatest(seen, (p_update ->> 'at')::timestamptz);
    end if;

    return p_state || jsonb_build_object(
        'exists', true, 'properties', props, 'last_seen_at', seen, 'created', created, 'changed', true);
end
$$;

comment on function idmerge.profile_step(jsonb, jsonb) is
    'Applies one Engage update to a profile state (the transition function of idmerge.profile_fold).';
