"""Override of pyinstaller-hooks-contrib's hook-dateutil: drop the bundled zoneinfo tarball.

botocore only uses UTC and the local zone (dateutil.tz.tzutc/tzlocal); the tarball is a fallback database
for `gettz()` names the system does not know.
"""

datas: list[tuple[str, str]] = []
