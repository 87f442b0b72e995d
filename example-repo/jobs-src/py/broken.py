"""The counter with a bug that raises while the job is being built, before anything is submitted:
for tests and demos of a refused Python job."""

from lib.clicks import check_rate

# A release that shipped a negative default rate.
check_rate(-1)
