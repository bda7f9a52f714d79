"""Inst-Inpaint re-implemented: the openaimodel UNet (:mod:`.unet`), the official-checkpoint converter
(:mod:`.convert`) and the remover (:mod:`.model`)."""

from magicremover.baselines.inst_inpaint.model import Architecture, InstInpaint, InstInpaintModel

__all__ = ["Architecture", "InstInpaint", "InstInpaintModel"]
