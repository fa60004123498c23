-- The most frequent span phrases per sentiment (lower-cased, trimmed), top 20 each.
create or replace view top_phrases_by_sentiment as
with phrases as (
    select sentiment, lower(trim(span)) as phrase
    from spans
    where sentiment <> 'neutral' and trim(span) <> ''
),

counted as (
    select sentiment, phrase, count(*) as phrase_count
    from phrases
    group by sentiment, phrase
),

ranked as (
    select
        sentiment,
        phrase,
        phrase_count,
        row_number() over (partition by sentiment order by phrase_count desc, phrase) as phrase_rank
    from counted
)

select sentiment, phrase_rank, phrase, phrase_count
from ranked
where phrase_rank <= 20
order by sentiment, phrase_rank;
