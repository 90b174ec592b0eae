import pytest
from transformers import BertForMaskedLM, BertForSequenceClassification, RobertaForSequenceClassification

from ticketlab.errors import TicketlabError
from ticketlab.models import LAYER_ROLES, EncoderAdapter
from ticketlab.models.tiny import tiny_model


@pytest.mark.parametrize(
    "model_type, has_pooler",
    [("bert", True), ("roberta", True), ("electra", False), ("distilbert", False)],
)
def test_encoder_scope_lists_every_layer_matrix_and_pooler(model_type, has_pooler):
    model = tiny_model(model_type)
    adapter = EncoderAdapter(model)
    matrices = adapter.prunable_matrices("encoder")
    assert len(matrices) == 2 * len(LAYER_ROLES) + int(has_pooler)
    for matrix in matrices:
        weight = adapter.parameter(matrix.name)
        assert weight.dim() == 2 and not matrix.name.endswith("bias")
    roles = [m.role for m in matrices if m.layer == 1]
    assert roles == list(LAYER_ROLES)
    shapes = {m.role: tuple(adapter.parameter(m.name).shape) for m in matrices if m.layer == 0}
    assert shapes["ffn_in"] == (64, 32) and shapes["ffn_out"] == (32, 64) and shapes["query"] == (32, 32)


def test_embedding_scope_adds_the_word_embeddings_first(bert):
    adapter = EncoderAdapter(bert)
    with_embeddings = adapter.prunable_matrices("encoder+embeddings")
    assert with_embeddings[0].name == "embeddings.word_embeddings.weight"
    assert with_embeddings[1:] == adapter.prunable_matrices("encoder")


def test_task_models_share_the_base_models_canonical_names(bert):
    names = [m.name for m in EncoderAdapter(bert).prunable_matrices()]
    assert not EncoderAdapter(tiny_model("bert", model_class=BertForMaskedLM)).has_pooler()
    for cls in (BertForSequenceClassification, BertForMaskedLM):
        task_model = tiny_model("bert", model_class=cls)
        adapter = EncoderAdapter(task_model)
        # BertForMaskedLM is built without a pooler; everything else lines up name for name.
        expected = names if adapter.has_pooler() else [n for n in names if not n.startswith("pooler.")]
        assert [m.name for m in adapter.prunable_matrices()] == expected
        assert adapter.full_name(names[0]) == "bert." + names[0]
        assert adapter.full_name(names[0]) in task_model.state_dict()


def test_roberta_classifier_has_no_pooler():
    adapter = EncoderAdapter(tiny_model("roberta", model_class=RobertaForSequenceClassification))
    assert not adapter.has_pooler()
    assert all(m.role != "pooler" for m in adapter.prunable_matrices())


def test_unknown_family_and_scope_are_clear_errors(bert):
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(TicketlabError, match="gpt2"):
        EncoderAdapter(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50)))
    with pytest.raises(TicketlabError, match="unknown scope"):
        EncoderAdapter(bert).prunable_matrices("everything")
