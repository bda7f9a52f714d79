from magicremover.clip_tokenizer import VOCAB_SIZE, build_clip_tokenizer, byte_alphabet


def test_real_clip_vocabulary_and_reference_ids():
    tok = build_clip_tokenizer()
    assert len(tok) == VOCAB_SIZE == 49408
    # The well-known ids of openai/clip-vit-large-patch14 for this prompt.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)


def test_padding_and_subword_splits_match_clip():
    tok = build_clip_tokenizer()
    ids = tok("a photo of a fire hydrant", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 49407
    assert tok.convert_ids_to_tokens(tok("surfboard").input_ids[1:-1]) == ["surf", "board</w>"]


def test_byte_alphabet_is_a_bijection_on_bytes():
    alphabet = byte_alphabet()
    assert len(alphabet) == len(set(alphabet)) == 256
    assert alphabet[0] == "!" and all(not ch.isspace() for ch in alphabet)


def test_save_pretrained_round_trip(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_clip_tokenizer()
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(again) == VOCAB_SIZE
    assert again("a photo of a dog.").input_ids == tok("a photo of a dog.").input_ids
