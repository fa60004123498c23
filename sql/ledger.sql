-- The ledger's statements, by name (store.named_statements). Parameters are positional.

-- name: find_version
select 1 from processed_files where file_path = $1 and size_bytes = $2 and mtime_ns = $3;

-- name: find_done_content
-- the same bytes at the same path were done before (the file was touched or copied again)
select 1 from processed_files where file_path = $1 and sha256 = $2 and status = 'done';

-- name: insert_empty_outcome
-- a file version that stores nothing: failed (a file-level error) or unchanged
insert into processed_files values ($1, $2, $3, $4, $5, null, 0, 0, $6, null, $7, $8);

-- name: add_attempt
insert into file_attempts values ($1, $2, $3, $4, $5, $6);

-- name: attempts_so_far
select count(*) from file_attempts where file_path = $1 and size_bytes = $2 and mtime_ns = $3;
