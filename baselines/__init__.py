"""Baseline removers behind the same call contract as MagicRemover (LaMa, SD-Inpaint, Inst-Inpaint, P2P)."""
