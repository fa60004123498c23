-- Why rows were quarantined, most common reasons first.
create or replace view quarantine_reasons as
select reason, count(*) as row_count, count(distinct source_file) as file_count, max(quarantined_at) as last_seen_at
from quarantine
group by reason
order by row_count desc, reason;
