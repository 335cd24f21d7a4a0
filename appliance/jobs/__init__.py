"""Jobs: every long operation, as an ordered list of steps with their undo, of a kind with typed
parameters; run one at a time per resource across processes and nodes (claimed in the catalog),
taken over after a crash; the events they (and everything else) emit; and the management nodes
that run them, one of which leads.

  plan.py, params.py, kinds/   what a job is, and each kind's parameters and steps
  engine.py, queue.py          running jobs in a process: per-resource workers, undo, recovery
  claims.py                    one job at a time per resource, whichever process or node runs it
  nodes.py                     which nodes are alive, which one leads, the leader's fencing token
  events.py                    what happened and what is happening, on every node

Locking. What is held, by whom, how (on PostgreSQL; on SQLite every writing transaction here
begins with BEGIN IMMEDIATE, which serializes writers, and there is one node), and until when:

  what                 held by                     how                                   until
  -------------------  --------------------------  ------------------------------------  ---------------------------
  a resource           the job that claimed it     resource_claims.job_id, and .token    the transaction recording
                                                   (the fence) copied to jobs.fence      the job's end
  a claim's decision   the claiming transaction    SELECT ... FOR UPDATE of the job,     its commit
                                                   then of the claim row
  a job                its runner: node, and on    jobs.runner_*; every write the        the runner's death: its
                       that node pid + start       runner makes checks jobs.fence        process (same node) or node
                                                                                         (heartbeat older than LEASE)
  a node name          the host that beats it      nodes.boot_id, heartbeat_at           LEASE after its last beat
  leadership           one `cairn serve`           leader_lease row (node, pid, start),  resign() at stop, or LEASE
                                                   renewed every HEARTBEAT; .term grows  after its last renewal
                                                   with each new leader
  a leader's write     its transaction             SELECT ... FOR SHARE of leader_lease, its commit
                                                   term checked (nodes.Term.confirm)
  a scheduled run      the scheduler's transaction SELECT ... FOR UPDATE of the policy;  its commit
                                                   scheduled_until moved only from the
                                                   value the tick read

Lock order, within one transaction: leader_lease, then policies, then jobs, then
resource_claims (try_claim, JobEngine._finish and the scheduler all go that way), so two
transactions never wait for each other in a circle.
"""
