-- BulkGPT: the prompt lab's runs, with row-level security like batches.
--
-- A lab run is a few rows of a file answered by two or more variants of a
-- prompt (template, system prompt, model, settings, output schema), with the
-- answers and the user's marks. The app reads and writes it whole, so it is
-- one JSON document (`data`); only what the list needs has a column.

create table public.lab_runs (
    id uuid primary key default gen_random_uuid(),
    user_id uuid references auth.users (id) on delete cascade,
    name text not null,
    data jsonb not null default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

comment on table public.lab_runs is
    'Prompt-lab runs: variants compared on a few rows, with answers and marks.';
comment on column public.lab_runs.user_id is
    'The owner (auth.users); null in a single-team deployment using the service role.';
comment on column public.lab_runs.data is
    'The run as the app saved it: variants, rows, cells and marks.';

create index lab_runs_owner on public.lab_runs (user_id, created_at desc);

-- An authenticated user sees and changes only their own runs; anon nothing.
-- The service role bypasses RLS: the stores filter by owner.
alter table public.lab_runs enable row level security;

create policy "Users manage their own lab runs"
    on public.lab_runs for all to authenticated
    using (user_id = (select auth.uid()))
    with check (user_id = (select auth.uid()));

revoke all on table public.lab_runs from anon, authenticated, public;
grant select, insert, update, delete on table public.lab_runs to authenticated;
grant all on table public.lab_runs to service_role;
