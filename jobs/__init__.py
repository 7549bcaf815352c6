"""The Studio's jobs, carried by a durable queue (DBOS Transact) rather than processes of the app.

- `jobs.engine`   the queue: where it lives, which queue a kind of job goes to, the app's client
- `jobs.worker`   `python -m jobs.worker --queue gpu --concurrency 1`: takes jobs, renews leases,
                  hands a lost worker's runs back to the queue
- `jobs.runner`   one run: claimed atomically, its body run, its outcome recorded
- `jobs.detect`, `jobs.discover`, `jobs.maps`   the job bodies; `jobs.progress` their progress bar
"""
