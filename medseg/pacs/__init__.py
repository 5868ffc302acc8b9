"""medseg.pacs"""
