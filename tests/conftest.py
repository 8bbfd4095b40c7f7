pytest_plugins = ["tests.fixtures_redis", "tests.fixtures_server"]
