"""mddose.evaluate"""
