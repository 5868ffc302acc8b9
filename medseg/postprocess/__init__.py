"""medseg.postprocess"""
