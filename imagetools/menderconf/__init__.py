"""The Mender client's configuration in both root filesystems: read it as the client will, change it.

One module per job, so a reader imports only what it uses (verify reads settings, never the
certificate checks or the writer):

- `settings`: mender.conf as the client reads it: strict JSON with exact numbers, dotted names
  matched without regard to case, the client's merge of its two files, the types it loads;
- `validate`: option values (server URL, tenant token, Artifact name, --set) and the PEM files
  given to -c and -v;
- `plan`: `ModifyPlan`, what to change, validated once for any number of images;
- `read`: what the client on each rootfs will use (`read`, `read_rootfs`);
- `modify`: the plan applied in place or into a copy (`modify`), or tried without writing (`preview`).

Files are found through imagetools.deviceview, as the running device finds them.
"""
