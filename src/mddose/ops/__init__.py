"""mddose.ops"""
