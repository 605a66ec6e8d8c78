"""moto's server with DynamoDB's atomicity: one DynamoDB request at a time.

DynamoDB applies a conditional write or a TransactWriteItems atomically, so two racing
writers can never both win. moto checks the condition and then writes without a lock,
and its server answers requests on many threads, so concurrent tests would see races
that DynamoDB itself never has. Serialising moto's DynamoDB requests restores the
guarantee; S3 and SQS requests stay concurrent (SQS long polls must not block others).
"""

import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_one_at_a_time = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialised_call_action(self):
    with _one_at_a_time:
        return _call_action(self)


DynamoHandler.call_action = _serialised_call_action

if __name__ == "__main__":
    sys.exit(main())
