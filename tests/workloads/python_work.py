# A Python workload for the node agent's tests: builds ~30 MB of objects, sorts and hashes them.
# Prints a digest that must be the same with and without Yonder, and the peak RSS in KiB.
import hashlib, random, resource, sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
random.seed(42)
d = {i: ("%d-" % (i * 7919)) * 3 for i in range(n)}
rows = [(random.random(), i, str(i)) for i in range(n)]
h = hashlib.sha256()
for k in sorted(d, key=lambda k: d[k]):
    h.update(d[k].encode())
rows.sort()
for r in rows[::7]:
    h.update(repr(r).encode())
print(h.hexdigest())
print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
