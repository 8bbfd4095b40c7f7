pytest_plugins = [
    "tests.fixtures_redis",
    "tests.fixtures_server",
    "tests.fixtures_nginx",
    "tests.fixtures_browser",
    "tests.fixtures_clients",
]
