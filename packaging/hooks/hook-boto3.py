"""Override of pyinstaller-hooks-contrib's hook-boto3.

The contrib hook collects boto3's resource models (`boto3/data`, used only by `boto3.resource(...)`) and the
dynamodb/ec2/s3 customisation packages, which boto3 loads only when a client or resource of those services
is created. The plugin creates plain `kms`/`sts` clients, so none of it is needed.
"""

hiddenimports: list[str] = []
datas: list[tuple[str, str]] = []
