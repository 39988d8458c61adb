"""The client side of the privacy options, switched by what the server sends: Flower's
`fixedclipping_mod` clips a site's update to the norm the DP wrapper put in the round's config
(`federated.dp_*`, medvlm.federated.strategies); Flower's `secaggplus_mod` runs the SecAgg+
stages when the server's secure-aggregation workflow drives the round (`federated.secure_aggregation`).
Without either, a message goes straight to the handler."""

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS


def privacy_mods(msg: Message, ctxt: Context, call_next) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    if SECAGG_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, ctxt, call_next)
    configs = list(msg.content.config_records.values())
    if len(configs) == 1 and KEY_CLIPPING_NORM in configs[0]:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)
