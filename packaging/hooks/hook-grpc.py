"""Override of pyinstaller-hooks-contrib's hook-grpc: collect grpc's data files except type stubs and the
C/C++ sources that ship next to the extension (.pyi, .h, .cc). `roots.pem` stays."""

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("grpc", excludes=["**/*.pyi", "**/*.h", "**/*.cc"])
