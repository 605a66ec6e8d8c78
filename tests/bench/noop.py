"""The benchmark's no-op task: measures the platform, not the script."""


def run(input_path, output_path, params):
    return {}
