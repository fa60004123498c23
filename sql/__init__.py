"""The schema and report views as SQL files, installed as the data package span_jobs.sql."""
