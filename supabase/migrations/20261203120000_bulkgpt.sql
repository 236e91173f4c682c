-- BulkGPT: batches, their rows and their progress, with row-level security.
--
-- Apply with `supabase db push`, or paste this file into the SQL editor of the
-- Supabase dashboard. The app and the worker reach these tables with the
-- service role key (server side only) or with a user's JWT; either way every
-- change of a row's status goes through the bulkgpt_* functions below, which
-- keep the counters on `batches` equal to the statuses of its rows.
--
-- The state words are the ones of bulkgpt_core/batches.py (BatchStatus,
-- RowStatus); the CHECK constraints and the column comments repeat them.

-- Tables ---------------------------------------------------------------------

create table public.batches (
    id uuid primary key default gen_random_uuid(),
    name text not null,
    user_id uuid references auth.users (id) on delete cascade,
    status text not null default 'pending' check (
        status in (
            'pending', 'running', 'paused', 'cancelling',
            'cancelled', 'completed', 'failed'
        )
    ),
    template text not null,
    system_prompt text not null default '',
    model text not null,
    generation jsonb not null default '{}',
    limits jsonb not null default '{}',
    output_schema jsonb,
    source_name text not null default '',
    columns jsonb not null default '[]',
    total_rows integer not null default 0,
    succeeded integer not null default 0,
    failed integer not null default 0,
    tokens_in bigint not null default 0,
    tokens_out bigint not null default 0,
    cost_usd numeric not null default 0,
    reused integer not null default 0,
    saved_usd numeric not null default 0,
    budget_usd numeric,
    rows_per_second double precision not null default 0,
    created_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz not null default now(),
    last_error text,
    runner text not null default 'local',
    call_id text
);

comment on table public.batches is
    'One row per BulkGPT batch: its settings and its counters.';
comment on column public.batches.status is
    'pending, running, paused, cancelling, cancelled, completed, failed';
comment on column public.batches.user_id is
    'The owner (auth.users); null in a single-team deployment using the service role.';
comment on column public.batches.succeeded is
    'Rows succeeded; changed only together with the rows, by the bulkgpt_* functions.';

create index batches_created on public.batches (created_at desc);
create index batches_owner on public.batches (user_id, created_at desc);

create table public.batch_results (
    batch_id uuid not null references public.batches (id) on delete cascade,
    row_index integer not null,
    input jsonb not null,
    prompt_hash text,
    output text,
    parsed jsonb,
    status text not null default 'pending' check (
        status in ('pending', 'running', 'succeeded', 'failed')
    ),
    error_kind text,
    error_message text,
    attempts integer not null default 0,
    tokens_in integer not null default 0,
    tokens_out integer not null default 0,
    cost_usd numeric not null default 0,
    latency_ms integer,
    finish_reason text,
    updated_at timestamptz,
    primary key (batch_id, row_index)
);

comment on table public.batch_results is
    'One row per input row of a batch, with its outcome.';
comment on column public.batch_results.status is
    'pending, running, succeeded, failed';

create index batch_results_status
    on public.batch_results (batch_id, status, row_index);
create index batch_results_latest
    on public.batch_results (batch_id, updated_at desc)
    where status in ('succeeded', 'failed');
create index batch_results_reuse
    on public.batch_results (prompt_hash)
    where status = 'succeeded';

create table public.batch_progress (
    id bigint generated always as identity primary key,
    batch_id uuid not null references public.batches (id) on delete cascade,
    at timestamptz not null default now(),
    succeeded integer not null,
    failed integer not null
);

comment on table public.batch_progress is
    'A batch''s counters every few seconds, for the throughput chart.';

create index batch_progress_batch on public.batch_progress (batch_id, at);

-- Row-level security ---------------------------------------------------------
-- An authenticated user sees and changes only their own batches and those
-- batches' rows. No policy names anon, so anon sees nothing (and has no
-- grants either). The service role bypasses RLS: the stores filter by owner.

alter table public.batches enable row level security;
alter table public.batch_results enable row level security;
alter table public.batch_progress enable row level security;

create policy "Users manage their own batches"
    on public.batches for all to authenticated
    using (user_id = (select auth.uid()))
    with check (user_id = (select auth.uid()));

create policy "Users manage the rows of their own batches"
    on public.batch_results for all to authenticated
    using (batch_id in (
        select b.id from public.batches b where b.user_id = (select auth.uid())
    ))
    with check (batch_id in (
        select b.id from public.batches b where b.user_id = (select auth.uid())
    ));

create policy "Users manage the progress of their own batches"
    on public.batch_progress for all to authenticated
    using (batch_id in (
        select b.id from public.batches b where b.user_id = (select auth.uid())
    ))
    with check (batch_id in (
        select b.id from public.batches b where b.user_id = (select auth.uid())
    ));

-- Supabase's default privileges give anon and authenticated everything
-- (TRUNCATE included, which RLS does not cover): take them back first.
revoke all on table public.batches, public.batch_results, public.batch_progress
    from anon, authenticated, public;
revoke all on sequence public.batch_progress_id_seq
    from anon, authenticated, public;
grant select, insert, update, delete
    on table public.batches, public.batch_results, public.batch_progress
    to authenticated;
grant all on table public.batches, public.batch_results, public.batch_progress
    to service_role;

-- Functions (RPC) --------------------------------------------------------------
-- Each does in one request what would otherwise take several. They are
-- SECURITY INVOKER: an authenticated caller's RLS policies apply inside them,
-- so another user's batch is simply not found. p_owner, when given, adds the
-- same check for the service role, which bypasses RLS.
-- A missing batch raises SQLSTATE PT404, which PostgREST answers with 404.

create function public.bulkgpt_require_batch(
    p_batch_id uuid, p_owner uuid default null, p_lock boolean default false
) returns void
language plpgsql
set search_path = ''
as $$
begin
    -- The lock serialises the writers of one batch, so flushes never deadlock.
    if p_lock then
        perform 1 from public.batches b
        where b.id = p_batch_id and (p_owner is null or b.user_id = p_owner)
        for no key update;
    else
        perform 1 from public.batches b
        where b.id = p_batch_id and (p_owner is null or b.user_id = p_owner);
    end if;
    if not found then
        raise sqlstate 'PT404' using
            message = format('No batch with id %s was found.', p_batch_id),
            hint = 'It does not exist, or it belongs to another user.';
    end if;
end;
$$;

create function public.bulkgpt_add_rows(
    p_batch_id uuid, p_start integer, p_rows jsonb, p_owner uuid default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
    v_total integer;
    v_count integer := jsonb_array_length(p_rows);
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner, true);
    select b.total_rows into v_total from public.batches b where b.id = p_batch_id;
    -- A retried request whose first attempt did commit: nothing more to do.
    if p_start + v_count <= v_total then
        return 0;
    end if;
    if p_start <> v_total then
        raise sqlstate '22023' using message = format(
            'Rows must be appended at index %s, not %s.', v_total, p_start
        );
    end if;
    insert into public.batch_results (batch_id, row_index, input)
    select p_batch_id, p_start + e.ord::integer - 1, e.item
    from jsonb_array_elements(p_rows) with ordinality as e (item, ord);
    update public.batches
    set total_rows = total_rows + v_count, updated_at = now()
    where id = p_batch_id;
    return v_count;
end;
$$;

create function public.bulkgpt_claim_rows(
    p_batch_id uuid,
    p_after integer,
    p_limit integer,
    p_lo integer default 0,
    p_hi integer default 2147483647,
    p_owner uuid default null
) returns table (row_index integer, input jsonb)
language plpgsql
set search_path = ''
as $$
declare
    v_indexes integer[];
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner);
    -- SKIP LOCKED: concurrent workers and shards never claim the same row.
    select coalesce(array_agg(p.row_index), '{}') into v_indexes from (
        select r.row_index from public.batch_results r
        where r.batch_id = p_batch_id and r.status = 'pending'
            and r.row_index > p_after
            and r.row_index >= p_lo and r.row_index < p_hi
        order by r.row_index
        limit p_limit
        for update skip locked
    ) p;
    return query
    with claimed as (
        update public.batch_results t set status = 'running'
        where t.batch_id = p_batch_id and t.row_index = any (v_indexes)
        returning t.row_index, t.input
    )
    select c.row_index, c.input from claimed c order by c.row_index;
end;
$$;

create function public.bulkgpt_release_rows(
    p_batch_id uuid, p_indexes integer[], p_owner uuid default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
    v_count integer;
begin
    perform 1 from public.batches b
    where b.id = p_batch_id and (p_owner is null or b.user_id = p_owner)
    for no key update;
    if not found then
        return 0;
    end if;
    update public.batch_results set status = 'pending'
    where batch_id = p_batch_id and row_index = any (p_indexes)
        and status = 'running';
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

create function public.bulkgpt_requeue_running(
    p_batch_id uuid,
    p_lo integer default 0,
    p_hi integer default 2147483647,
    p_owner uuid default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
    v_count integer;
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner, true);
    update public.batch_results set status = 'pending'
    where batch_id = p_batch_id and status = 'running'
        and row_index >= p_lo and row_index < p_hi;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

create function public.bulkgpt_record_results(
    p_batch_id uuid, p_results jsonb, p_owner uuid default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
    v_indexes integer[];
    v_changed bigint;
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner, true);
    -- Only rows not yet terminal change, and the counters move by exactly
    -- those rows: a flush sent twice counts once. The rows are found by their
    -- indexes, so the plan stays an index lookup even before the table's
    -- statistics know how big a freshly ingested batch is.
    v_indexes := array(
        select (e ->> 'row_index')::integer from jsonb_array_elements(p_results) e
    );
    with incoming as (
        select * from jsonb_to_recordset(p_results) as r (
            row_index integer, status text, output text, parsed jsonb,
            prompt_hash text, error_kind text, error_message text,
            attempts integer, tokens_in integer, tokens_out integer,
            cost_usd numeric, latency_ms integer, finish_reason text,
            reused boolean, saved_usd numeric
        )
    ), changed as (
        update public.batch_results t set
            status = i.status,
            output = i.output,
            parsed = i.parsed,
            prompt_hash = i.prompt_hash,
            error_kind = i.error_kind,
            error_message = i.error_message,
            attempts = t.attempts + coalesce(i.attempts, 0),
            tokens_in = coalesce(i.tokens_in, 0),
            tokens_out = coalesce(i.tokens_out, 0),
            cost_usd = coalesce(i.cost_usd, 0),
            latency_ms = i.latency_ms,
            finish_reason = i.finish_reason,
            updated_at = now()
        from incoming i
        where t.batch_id = p_batch_id and t.row_index = any (v_indexes)
            and t.row_index = i.row_index
            and t.status in ('pending', 'running')
        returning i.*
    ), totals as (
        select
            count(*) as n,
            count(*) filter (where c.status = 'succeeded') as succeeded,
            count(*) filter (where c.status = 'failed') as failed,
            coalesce(sum(c.tokens_in), 0) as tokens_in,
            coalesce(sum(c.tokens_out), 0) as tokens_out,
            coalesce(sum(c.cost_usd), 0) as cost_usd,
            count(*) filter (where c.reused) as reused,
            coalesce(sum(c.saved_usd), 0) as saved_usd
        from changed c
    )
    update public.batches b set
        succeeded = b.succeeded + s.succeeded,
        failed = b.failed + s.failed,
        tokens_in = b.tokens_in + s.tokens_in,
        tokens_out = b.tokens_out + s.tokens_out,
        cost_usd = b.cost_usd + s.cost_usd,
        reused = b.reused + s.reused,
        saved_usd = b.saved_usd + s.saved_usd,
        updated_at = now()
    from totals s
    where b.id = p_batch_id and s.n > 0
    returning s.n into v_changed;
    return coalesce(v_changed, 0);
end;
$$;

create function public.bulkgpt_reset_failed(
    p_batch_id uuid, p_kinds text[] default null, p_owner uuid default null
) returns integer
language plpgsql
set search_path = ''
as $$
declare
    v_count integer;
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner, true);
    update public.batch_results set
        status = 'pending', error_kind = null, error_message = null,
        output = null, parsed = null
    where batch_id = p_batch_id and status = 'failed'
        and (p_kinds is null or error_kind = any (p_kinds));
    get diagnostics v_count = row_count;
    -- Tokens and cost already spent stay on the batch: they were billed.
    update public.batches set failed = failed - v_count, updated_at = now()
    where id = p_batch_id;
    return v_count;
end;
$$;

create function public.bulkgpt_set_status(
    p_batch_id uuid,
    p_status text,
    p_only_from text[] default null,
    p_last_error text default null,
    p_owner uuid default null
) returns boolean
language plpgsql
set search_path = ''
as $$
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner);
    update public.batches set
        status = p_status,
        updated_at = now(),
        last_error = coalesce(p_last_error, last_error),
        finished_at = case
            when p_status in ('cancelled', 'completed', 'failed') then now()
            else finished_at
        end
    where id = p_batch_id and (p_only_from is null or status = any (p_only_from));
    return found;
end;
$$;

create function public.bulkgpt_add_progress_sample(
    p_batch_id uuid, p_owner uuid default null
) returns void
language sql
set search_path = ''
as $$
    insert into public.batch_progress (batch_id, succeeded, failed)
    select b.id, b.succeeded, b.failed from public.batches b
    where b.id = p_batch_id and (p_owner is null or b.user_id = p_owner);
$$;

create function public.bulkgpt_failure_counts(
    p_batch_id uuid, p_owner uuid default null
) returns table (error_kind text, failed_rows bigint)
language plpgsql
set search_path = ''
as $$
begin
    perform public.bulkgpt_require_batch(p_batch_id, p_owner);
    return query
    select coalesce(r.error_kind, 'other'), count(*)
    from public.batch_results r
    where r.batch_id = p_batch_id and r.status = 'failed'
    group by 1
    order by 2 desc, 1;
end;
$$;

create function public.bulkgpt_find_reusable(
    p_hashes text[], p_batch_id uuid default null, p_owner uuid default null
) returns setof public.batch_results
language sql
stable
set search_path = ''
as $$
    select distinct on (r.prompt_hash) r.*
    from public.batch_results r
    where r.status = 'succeeded' and r.prompt_hash = any (p_hashes)
        and (p_batch_id is null or r.batch_id = p_batch_id)
        and (p_owner is null or r.batch_id in (
            select b.id from public.batches b where b.user_id = p_owner
        ))
    order by r.prompt_hash, r.updated_at desc;
$$;

-- Only signed-in users and the service role may call them (Postgres grants
-- EXECUTE to PUBLIC by default, and Supabase to anon).
do $$
declare
    f regprocedure;
begin
    for f in
        select p.oid::regprocedure from pg_proc p
        where p.pronamespace = 'public'::regnamespace
            and p.proname like 'bulkgpt\_%'
    loop
        execute format('revoke all on function %s from public, anon', f);
        execute format(
            'grant execute on function %s to authenticated, service_role', f
        );
    end loop;
end;
$$;
